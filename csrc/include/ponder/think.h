// Framework-free math of ponder.ops.think (ThinK decode attention): a branch-free exp2 that
// vectorises, and the merge of online-softmax partials.
#pragma once

#include <cstdint>
#include <cstring>

#include "ponder/common.h"

namespace ponder {
namespace think {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// 2^x for x <= 0 (logits minus their running max), relative error ~2e-7 (about 2 ulp): a
// degree-7 Taylor polynomial of 2^f on f in [-0.5, 0.5] times 2^n built from the exponent bits.
// Branch-free, so `omp simd` loops over it vectorise (libm's exp2f does not). Inputs below -126
// are clamped: 2^-126 is negligible next to the running max's own term (which is 1).
PONDER_HD float exp2_neg(float x) {
  x = x < -126.0f ? -126.0f : x;
  // Round to nearest integer by the 1.5 * 2^23 trick (exact for |x| < 2^22, vectorises on SSE2).
  const float magic = 12582912.0f;
  const float n = (x + magic) - magic;
  const float f = x - n;  // in [-0.5, 0.5]
  float p = 1.5252733804059841e-5f;
  p = p * f + 1.5403530393381608e-4f;
  p = p * f + 1.3333558146428443e-3f;
  p = p * f + 9.6181291076284772e-3f;
  p = p * f + 5.5504108664821580e-2f;
  p = p * f + 2.4022650695910071e-1f;
  p = p * f + 6.9314718055994531e-1f;
  p = p * f + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

}  // namespace think
}  // namespace ponder
