// Framework-free math of ponder.ops.speculative (token-level speculative sampling and RSD's step
// acceptance), shared by the CPU launchers and any CUDA port.
#pragma once

#include <cmath>

#include "ponder/common.h"
#include "ponder/random.h"

PONDER_NAMESPACE_BEGIN
namespace speculative {

// Philox streams: row r's accept-test uniforms use stream 2 r, its race uniforms stream 2 r + 1
// (row r = 0 for every row when each row has its own seed), so rows never share numbers.
PONDER_HD uint32_t accept_stream(int64_t row) { return static_cast<uint32_t>(2 * row); }
PONDER_HD uint32_t race_stream(int64_t row) { return static_cast<uint32_t>(2 * row + 1); }
constexpr uint32_t kStepStream = 0x53544550u;  // accept_steps ("STEP")

// exp(x) for x <= 0 without branches, so that loops over a vocabulary row vectorise:
// x = n ln2 + r, |r| <= ln2 / 2, exp(r) by its degree-6 Taylor polynomial (relative error
// < 3e-7), 2^n through the exponent bits. Inputs below -104 (including -inf) give 0, like expf,
// never NaN; callers mask excluded entries by multiplying with a 0/1 weight (a select here would
// be turned into a branch around the polynomial, which stops GCC from vectorising).
// Results below exp(-87) are subnormal: 2^n is applied as 2^(n + 64) (exact) then 2^-64, which
// rounds once, like expf. (Clamping to exp(-87) ~ 1e-38 weighed a token of probability
// exp(-1e30) 1e-38, and it won races whose other weights were exactly 0.)
PONDER_HD float exp_nonpos_f32(float x) {
  const float in_range = static_cast<float>(x >= -104.0f);
  x = x > -104.0f ? x : -104.0f;
  // Truncation of a value <= 0.5 rounds up: n = round-half-down(x / ln2), |r| <= ln2 / 2.
  const int ni = static_cast<int>(x * 1.44269504088896341f - 0.5f);
  const float n = static_cast<float>(ni);
  const float r = x - n * 0.693145751953125f - n * 1.42860682030941723e-06f;
  const float p =
      1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 +
                                                                            r * (1.0f / 720))))));
  return in_range * (p * random::bits_float(static_cast<uint32_t>(ni + 127 + 64) << 23)) *
         5.42101086242752217e-20f;  // 2^-64
}

// Step acceptance weight omega(r) of RSD (arXiv 2501.19324). kinds: 0 binary step 1{r >= delta},
// 1 constant delta, 2 clipping min(1, max(0, r / delta)), 3 sigmoid 1 / (1 + exp(-s (r - delta))).
PONDER_HD double step_weight(int kind, double r, double delta, double sharpness) {
  switch (kind) {
    case 0: return r >= delta ? 1.0 : 0.0;
    case 1: return delta;
    case 2: {
      const double w = r / delta;
      return w < 0.0 ? 0.0 : (w > 1.0 ? 1.0 : w);
    }
    default: return 1.0 / (1.0 + exp(-sharpness * (r - delta)));
  }
}

}  // namespace speculative
PONDER_NAMESPACE_END
