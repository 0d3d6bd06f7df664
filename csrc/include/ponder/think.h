// Framework-free math of ponder.ops.think, shared by the CPU launchers (cpu/think.cpp) and the
// CUDA kernels (cuda/think.cu): a branch-free exp2 that vectorises, the online-softmax update of
// one key, the merge of online-softmax partials and its final normalisation, and the channel
// score's last step.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "ponder/common.h"

PONDER_NAMESPACE_BEGIN
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
#if defined(__CUDA_ARCH__)
  const float scale = __int_as_float(bits);
#else
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
#endif
  return p * scale;
}

// The weight of a partial (max m, base 2) when partials are merged under the overall max mx:
// 2^(m - mx), exactly 1 for the partial that holds the max. m must be > -inf (a partial that saw
// no key is skipped by the caller). A poisoned partial (m = +inf, NaN sum) gets weight 1, so the
// merged sum is NaN, as torch gives for NaN inputs.
PONDER_HD float merge_weight(float m, float mx) { return m == mx ? 1.0f : exp2_neg(m - mx); }

// The natural-log log-sum-exp of a merged row: max mx (base 2) and sum total of 2^(s - mx).
PONDER_HD float lse_natural(float mx, float total) { return (mx + log2f(total)) * kLn2; }

// One key with base-2 score s joins a row's online softmax (max m, sum l): returns alpha, the
// factor the row's accumulated output must be multiplied by, and sets p, the key's weight. A
// masked key (s = -inf) changes nothing. A NaN score poisons the row for good (m = +inf, l and
// alpha NaN: the output becomes NaN, as in torch); later keys then leave it as it is.
PONDER_HD float online_update(float& m, float& l, float s, float& p) {
  const float inf = __builtin_huge_valf();
  if (s != s) {
    m = inf;
    l = s;
    p = 0.0f;
    return s;
  }
  if (s == -inf || m == inf) {
    p = 0.0f;
    return 1.0f;
  }
  const float m_new = m > s ? m : s;
  const float alpha = m == -inf ? 0.0f : exp2_neg(m - m_new);
  p = exp2_neg(s - m_new);
  l = l * alpha + p;
  m = m_new;
  return alpha;
}

// The ThinK channel score from its two sums of squares: mean of q^2 over the q_count query values
// of the group times mean of k^2 over the k_count keys, rounded to float once.
PONDER_HD float channel_score(double q_squares, int64_t q_count, double k_squares,
                              int64_t k_count) {
  const double q_term = q_squares / double(q_count), k_term = k_squares / double(k_count);
  return static_cast<float>(q_term * k_term);
}

}  // namespace think
PONDER_NAMESPACE_END
