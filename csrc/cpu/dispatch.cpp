// Run-time choice of the instruction set for the CPU launchers: cpu/langevin.cpp is compiled for
// baseline x86-64 (or the host's baseline elsewhere) and, on x86-64, again with AVX2 + FMA and
// with AVX-512; the entry points call the widest copy this CPU supports, so one wheel is fast
// everywhere. PONDER_CPU_ISA=default|avx2 caps the choice.
#include <cstdlib>
#include <cstring>

#include "cpu/ops.h"

namespace ponder {
namespace cpu {
namespace {

enum class Isa { kDefault, kAvx2, kAvx512 };

Isa detect() {
  Isa cap = Isa::kAvx512;
  if (const char* env = std::getenv("PONDER_CPU_ISA")) {
    if (std::strcmp(env, "default") == 0) cap = Isa::kDefault;
    if (std::strcmp(env, "avx2") == 0) cap = Isa::kAvx2;
  }
#if defined(PONDER_HAVE_X86_ISAS) && (defined(__x86_64__) || defined(_M_X64))
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512bw");
  if (avx512 && cap == Isa::kAvx512) return Isa::kAvx512;
  if (avx2 && cap != Isa::kDefault) return Isa::kAvx2;
#else
  (void)cap;
#endif
  return Isa::kDefault;
}

Isa isa() {
  static const Isa chosen = detect();
  return chosen;
}

}  // namespace

#if defined(PONDER_HAVE_X86_ISAS)
#define PONDER_ISA_CALL(fn, ...)                                   \
  if (isa() == Isa::kAvx512) return isa_avx512::fn(__VA_ARGS__);   \
  if (isa() == Isa::kAvx2) return isa_avx2::fn(__VA_ARGS__);       \
  return isa_default::fn(__VA_ARGS__)
#else
#define PONDER_ISA_CALL(fn, ...) return isa_default::fn(__VA_ARGS__)
#endif

const char* active_isa() {
  switch (isa()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "default";
  }
}

void ula_step(uintptr_t out, uintptr_t x, uintptr_t grad_logp, uintptr_t noise, int64_t n,
              int dtype, double drift, double noise_scale, uint64_t seed, int threads) {
  PONDER_ISA_CALL(ula_step, out, x, grad_logp, noise, n, dtype, drift, noise_scale, seed, threads);
}

void proximal_step(uintptr_t out, uintptr_t z, uintptr_t y, uintptr_t grad_logp, uintptr_t noise,
                   int64_t n, int dtype, double keep, double pull, double drift,
                   double noise_scale, uint64_t seed, int threads) {
  PONDER_ISA_CALL(proximal_step, out, z, y, grad_logp, noise, n, dtype, keep, pull, drift,
                  noise_scale, seed, threads);
}

void uld_step(uintptr_t x_out, uintptr_t v_out, uintptr_t x, uintptr_t v, uintptr_t grad_logp,
              uintptr_t noise, int64_t n, int dtype, double a, double b, double e, double sv,
              double sxv, double sx, uint64_t seed, int threads) {
  PONDER_ISA_CALL(uld_step, x_out, v_out, x, v, grad_logp, noise, n, dtype, a, b, e, sv, sxv, sx,
                  seed, threads);
}

void mala_accept(uintptr_t x_out, uintptr_t logp_out, uintptr_t grad_out, uintptr_t accepted,
                 uintptr_t x, uintptr_t logp, uintptr_t grad_logp, uintptr_t x_prop,
                 uintptr_t logp_prop, uintptr_t grad_logp_prop, uintptr_t uniforms,
                 int64_t chains, int64_t dim, int dtype, double step_size, uint64_t seed,
                 int threads) {
  PONDER_ISA_CALL(mala_accept, x_out, logp_out, grad_out, accepted, x, logp, grad_logp, x_prop,
                  logp_prop, grad_logp_prop, uniforms, chains, dim, dtype, step_size, seed,
                  threads);
}

// ---- PRM step scoring (ponder.ops.prm) ----
void prm_steps(uintptr_t logits, uintptr_t scores, uintptr_t mins, uintptr_t lasts,
               uintptr_t products, uintptr_t means, uintptr_t num_steps, uintptr_t hidden,
               uintptr_t step_index, uintptr_t head, uintptr_t bias, int64_t batch,
               int64_t length, int64_t width, int64_t steps, int64_t labels, int64_t stride_b,
               int64_t stride_l, int dtype, int threads) {
  PONDER_ISA_CALL(prm_steps, logits, scores, mins, lasts, products, means, num_steps, hidden,
                  step_index, head, bias, batch, length, width, steps, labels, stride_b, stride_l,
                  dtype, threads);
}

// ---- ThinK (ponder.ops.think) ----
void think_pruned_decode_attention(uintptr_t out, uintptr_t lse, uintptr_t q, uintptr_t k_pruned,
                                   uintptr_t idx, uintptr_t k_recent, uintptr_t v,
                                   uintptr_t starts, uintptr_t lengths, int64_t batch, int64_t hq,
                                   int64_t hkv, int64_t s_len, int64_t lp, int64_t lr,
                                   int64_t dim, int64_t kept, int64_t dv, int64_t kp_sb,
                                   int64_t kp_sh, int64_t kp_sl, int64_t kr_sb, int64_t kr_sh,
                                   int64_t kr_sl, int64_t v_sb, int64_t v_sh, int64_t v_sl,
                                   int dtype, double scale, int threads) {
  PONDER_ISA_CALL(think_pruned_decode_attention, out, lse, q, k_pruned, idx, k_recent, v, starts,
                  lengths, batch, hq, hkv, s_len, lp, lr, dim, kept, dv, kp_sb, kp_sh, kp_sl,
                  kr_sb, kr_sh, kr_sl, v_sb, v_sh, v_sl, dtype, scale, threads);
}

void think_channel_scores(uintptr_t out, uintptr_t q_window, uintptr_t k, int64_t batch,
                          int64_t hq, int64_t hkv, int64_t window, int64_t length, int64_t dim,
                          int dtype, int threads) {
  PONDER_ISA_CALL(think_channel_scores, out, q_window, k, batch, hq, hkv, window, length, dim,
                  dtype, threads);
}

// ---- speculative decoding (ponder.ops.speculative) ----
void accept_tokens(uintptr_t tokens_out, uintptr_t counts_out, uintptr_t draft_tokens,
                   uintptr_t target_logits, uintptr_t draft_logits, uintptr_t target_thr,
                   uintptr_t draft_thr, uintptr_t accept_u, uintptr_t race_u, uintptr_t seeds,
                   int64_t batch, int64_t k, int64_t vocab, int dtype, double temperature,
                   int per_row_seeds, int threads) {
  PONDER_ISA_CALL(accept_tokens, tokens_out, counts_out, draft_tokens, target_logits,
                  draft_logits, target_thr, draft_thr, accept_u, race_u, seeds, batch, k, vocab,
                  dtype, temperature, per_row_seeds, threads);
}

void accept_steps(uintptr_t accepted_out, uintptr_t weights_out, uintptr_t rewards,
                  uintptr_t uniforms, int64_t n, int kind, double threshold, double sharpness,
                  uint64_t seed, int threads) {
  PONDER_ISA_CALL(accept_steps, accepted_out, weights_out, rewards, uniforms, n, kind, threshold,
                  sharpness, seed, threads);
}

}  // namespace cpu
}  // namespace ponder
