// Framework-free math of ponder.ops.speculative (token-level speculative sampling and RSD's step
// acceptance), shared by the CPU launchers and any CUDA port.
#pragma once

#include <cmath>

#include "ponder/check.h"
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

// ---- The launchers' argument checks (host only) ----
// The CPU launchers (cpu/speculative.cpp) and the CUDA ones (cuda/speculative.cu) run the same
// checks with the same messages: the arguments are the launchers' own, in their order. Each
// backend adds what only it needs after these (the CPU re-reads the draft tokens, CUDA checks
// its workspace and launch limits).
namespace speculative {

inline void check_accept_tokens(const char* op, uintptr_t tokens_out, int64_t tokens_out_numel,
                                uintptr_t counts_out, int64_t counts_out_numel,
                                uintptr_t draft_tokens, int64_t draft_tokens_numel,
                                uintptr_t target_logits, int64_t target_logits_numel,
                                uintptr_t draft_logits, int64_t draft_logits_numel,
                                uintptr_t target_thr, int64_t target_thr_numel,
                                uintptr_t draft_thr, int64_t draft_thr_numel, uintptr_t accept_u,
                                int64_t accept_u_numel, uintptr_t race_u, int64_t race_u_numel,
                                uintptr_t seeds, int64_t seeds_numel, int64_t batch, int64_t k,
                                int64_t vocab, double temperature) {
  // K < 2^62 keeps K + 1 (the target rows per batch row) far from overflow.
  PONDER_CHECK(k >= 1 && k < (int64_t(1) << 62),
               op << ": K (draft tokens per row) must be in [1, 2^62), got " << k);
  PONDER_CHECK(vocab >= 1, op << ": vocab must be >= 1, got " << vocab);
  PONDER_CHECK(temperature >= 0.0 && std::isfinite(temperature),
               op << ": temperature must be finite and >= 0, got " << temperature);
  const bool greedy = temperature == 0.0;
  // An absent optional buffer is (0, 0); anything else is checked as a buffer below.
  const bool has_accept_u = accept_u != 0 || accept_u_numel != 0;
  const bool has_race_u = race_u != 0 || race_u_numel != 0;
  const bool has_seeds = seeds != 0 || seeds_numel != 0;
  PONDER_CHECK(greedy || has_accept_u == has_race_u,
               op << ": pass both uniform buffers or neither");
  PONDER_CHECK(greedy || has_accept_u || has_seeds || batch == 0,
               op << ": seeds is a null pointer");
  check_buffer(op, {"tokens_out", tokens_out, tokens_out_numel}, {batch, k + 1});
  check_buffer(op, {"counts_out", counts_out, counts_out_numel}, {batch});
  check_buffer(op, {"draft_tokens", draft_tokens, draft_tokens_numel}, {batch, k});
  check_buffer(op, {"target_logits", target_logits, target_logits_numel}, {batch, k + 1, vocab});
  check_optional_buffer(op, {"draft_logits", draft_logits, draft_logits_numel}, {batch, k, vocab});
  check_optional_buffer(op, {"target_thr", target_thr, target_thr_numel}, {batch, k + 1});
  check_optional_buffer(op, {"draft_thr", draft_thr, draft_thr_numel}, {batch, k});
  check_optional_buffer(op, {"accept_u", accept_u, accept_u_numel}, {batch, k});
  check_optional_buffer(op, {"race_u", race_u, race_u_numel}, {batch, vocab});
  check_optional_buffer(op, {"seeds", seeds, seeds_numel}, {batch});
}

inline void check_accept_steps(const char* op, uintptr_t accepted_out,
                               int64_t accepted_out_numel, uintptr_t weights_out,
                               int64_t weights_out_numel, uintptr_t rewards,
                               int64_t rewards_numel, uintptr_t uniforms, int64_t uniforms_numel,
                               int64_t n, int kind) {
  PONDER_CHECK(kind >= 0 && kind <= 3, op << ": unknown omega code " << kind);
  check_buffer(op, {"accepted_out", accepted_out, accepted_out_numel}, {n});
  check_buffer(op, {"weights_out", weights_out, weights_out_numel}, {n});
  check_buffer(op, {"rewards", rewards, rewards_numel}, {n});
  check_optional_buffer(op, {"uniforms", uniforms, uniforms_numel}, {n});
}

}  // namespace speculative
PONDER_NAMESPACE_END
