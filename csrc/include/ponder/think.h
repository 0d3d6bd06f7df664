// Framework-free math of ponder.ops.think, shared by the CPU launchers (cpu/think.cpp) and the
// CUDA kernels (cuda/think.cu): a branch-free exp2 that vectorises, the online-softmax update of
// one key, the merge of online-softmax partials and its final normalisation, and the channel
// score's last step.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "ponder/check.h"
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

// ---- The launchers' argument checks (host only) ----
// The CPU launchers (cpu/think.cpp) and the CUDA ones (cuda/think.cu) run the same checks with
// the same messages: the arguments are the launchers' own, in their order. A backend checks its
// own limits around them (CUDA: head dims and chunk length before, workspace and launch size
// after) and the CPU re-reads the channel indices and key windows.

// The most keys (Lp, and Lr) a call may have: far above any cache. Key positions are counted in
// int64 with room to spare (chunk bounds, Lp + Lr), and a zero token stride would otherwise
// leave a huge count unchecked.
constexpr int64_t kMaxKeys = int64_t(1) << 40;

inline void check_pruned_decode_attention(
    const char* op, uintptr_t out, int64_t out_numel, uintptr_t lse, int64_t lse_numel,
    uintptr_t q, int64_t q_numel, uintptr_t k_pruned, int64_t k_pruned_numel, uintptr_t idx,
    int64_t idx_numel, uintptr_t k_recent, int64_t k_recent_numel, uintptr_t v, int64_t v_numel,
    uintptr_t starts, int64_t starts_numel, uintptr_t lengths, int64_t lengths_numel,
    int64_t batch, int64_t hq, int64_t hkv, int64_t s_len, int64_t lp, int64_t lr, int64_t dim,
    int64_t kept, int64_t dv, int64_t kp_sb, int64_t kp_sh, int64_t kp_sl, int64_t kr_sb,
    int64_t kr_sh, int64_t kr_sl, int64_t v_sb, int64_t v_sh, int64_t v_sl) {
  PONDER_CHECK(hkv >= 1 && hq % hkv == 0,
               op << ": Hq = " << hq << " must be a multiple of Hkv = " << hkv);
  PONDER_CHECK(kept <= dim, op << ": T = " << kept << " exceeds D = " << dim);
  PONDER_CHECK(lp <= kMaxKeys && lr <= kMaxKeys,
               op << ": Lp = " << lp << " and Lr = " << lr << " must be at most 2^40 keys each");
  check_buffer(op, {"out", out, out_numel}, {batch, hq, s_len, dv});
  check_buffer(op, {"lse", lse, lse_numel}, {batch, hq, s_len});
  check_buffer(op, {"q", q, q_numel}, {batch, hq, s_len, dim});
  check_buffer(op, {"k_pruned", k_pruned, k_pruned_numel}, {batch, hkv, lp, kept},
               {kp_sb, kp_sh, kp_sl, 1});
  check_buffer(op, {"idx", idx, idx_numel}, {batch, hkv, kept});
  check_buffer(op, {"k_recent", k_recent, k_recent_numel}, {batch, hkv, lr, dim},
               {kr_sb, kr_sh, kr_sl, 1});
  check_buffer(op, {"v", v, v_numel}, {batch, hkv, lp + lr, dv}, {v_sb, v_sh, v_sl, 1});
  check_optional_buffer(op, {"starts", starts, starts_numel}, {batch});
  check_optional_buffer(op, {"lengths", lengths, lengths_numel}, {batch});
}

inline void check_channel_scores(const char* op, uintptr_t out, int64_t out_numel,
                                 uintptr_t q_window, int64_t q_window_numel, uintptr_t k,
                                 int64_t k_numel, int64_t batch, int64_t hq, int64_t hkv,
                                 int64_t window, int64_t length, int64_t dim) {
  PONDER_CHECK(window >= 1 && length >= 1,
               op << ": need W, L >= 1, got W = " << window << ", L = " << length);
  PONDER_CHECK(hkv >= 1 && hq % hkv == 0,
               op << ": Hq = " << hq << " must be a multiple of Hkv = " << hkv);
  check_buffer(op, {"out", out, out_numel}, {batch, hkv, dim});
  check_buffer(op, {"q_window", q_window, q_window_numel}, {batch, hq, window, dim});
  check_buffer(op, {"k", k, k_numel}, {batch, hkv, length, dim});
}

}  // namespace think
PONDER_NAMESPACE_END
