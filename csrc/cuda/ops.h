// CUDA launchers, one per op: the parameters of the CPU launcher of the same name (cpu/ops.inc:
// each buffer as the pair (address, element count), checked like there) with the CUDA device index and the stream handle torch is using (as integers) in place of the
// thread count. Each runs asynchronously on that stream, leaves the caller's current device as it
// was, and throws std::runtime_error with the CUDA error string if the launch fails
// (cuda/common.cuh).
#pragma once

#include <cstdint>

// The ops ponder._cuda exports, by name (bind_cuda.cpp). A new op: declare it below, define it
// in its .cu file, add its name here.
#define PONDER_CUDA_OPS(X)                                              \
  X(ula_step) X(proximal_step) X(uld_step) X(mala_accept)               \
  X(prm_steps)                                                          \
  X(think_pruned_decode_attention) X(think_channel_scores)              \
  X(accept_tokens) X(accept_steps)

namespace ponder {
namespace cuda {

int device_count();

void ula_step(uintptr_t out, int64_t out_numel, uintptr_t x, int64_t x_numel,
              uintptr_t grad_logp, int64_t grad_logp_numel, uintptr_t noise,
              int64_t noise_numel, int64_t n, int dtype, double drift, double noise_scale,
              uint64_t seed, int device, uintptr_t stream);

void proximal_step(uintptr_t out, int64_t out_numel, uintptr_t z, int64_t z_numel, uintptr_t y,
                   int64_t y_numel, uintptr_t grad_logp, int64_t grad_logp_numel,
                   uintptr_t noise, int64_t noise_numel, int64_t n, int dtype, double keep,
                   double pull, double drift, double noise_scale, uint64_t seed, int device,
                   uintptr_t stream);

void uld_step(uintptr_t x_out, int64_t x_out_numel, uintptr_t v_out, int64_t v_out_numel,
              uintptr_t x, int64_t x_numel, uintptr_t v, int64_t v_numel, uintptr_t grad_logp,
              int64_t grad_logp_numel, uintptr_t noise, int64_t noise_numel, int64_t n,
              int dtype, double a, double b, double e, double sv, double sxv, double sx,
              uint64_t seed, int device, uintptr_t stream);

void mala_accept(uintptr_t x_out, int64_t x_out_numel, uintptr_t logp_out, int64_t logp_out_numel,
                 uintptr_t grad_out, int64_t grad_out_numel, uintptr_t accepted,
                 int64_t accepted_numel, uintptr_t x, int64_t x_numel, uintptr_t logp,
                 int64_t logp_numel, uintptr_t grad_logp, int64_t grad_logp_numel,
                 uintptr_t x_prop, int64_t x_prop_numel, uintptr_t logp_prop,
                 int64_t logp_prop_numel, uintptr_t grad_logp_prop, int64_t grad_logp_prop_numel,
                 uintptr_t uniforms, int64_t uniforms_numel, int64_t chains, int64_t dim,
                 int dtype, double step_size, uint64_t seed, int device, uintptr_t stream);

// ---- PRM step scoring (cuda/prm.cu): the CPU launcher's parameters. The step positions are on
// the device and are not re-read on the host: a position outside [0, L) other than -1 reads
// nothing and gives NaN logits and score (Python checks them before the call).
void prm_steps(uintptr_t logits, int64_t logits_numel, uintptr_t scores, int64_t scores_numel,
               uintptr_t mins, int64_t mins_numel, uintptr_t lasts, int64_t lasts_numel,
               uintptr_t products, int64_t products_numel, uintptr_t means, int64_t means_numel,
               uintptr_t num_steps, int64_t num_steps_numel, uintptr_t hidden,
               int64_t hidden_numel, uintptr_t step_index, int64_t step_index_numel,
               uintptr_t head, int64_t head_numel, uintptr_t bias, int64_t bias_numel,
               int64_t batch, int64_t length, int64_t width, int64_t steps, int64_t labels,
               int64_t stride_b, int64_t stride_l, int dtype, int device, uintptr_t stream);

// ---- ThinK (cuda/think.cu) ----
// The CPU launcher's parameters plus a float32 `workspace` for the split-K partials, at least
// B * Hkv * chunks * (Hq / Hkv * S) * (Dv + 2) floats with chunks = ceil((Lp + Lr) / chunk_keys)
// (chunk_keys, from the shapes: ponder/ops/think.py). D and Dv at most 256; fp32/fp16/bf16.
// Channel indices and starts / lengths are device data, not re-read on the host: an index
// outside [0, D) poisons its rows with NaN, and the windows are clamped into [0, Lp + Lr].
void think_pruned_decode_attention(
    uintptr_t out, int64_t out_numel, uintptr_t lse, int64_t lse_numel, uintptr_t q,
    int64_t q_numel, uintptr_t k_pruned, int64_t k_pruned_numel, uintptr_t idx, int64_t idx_numel,
    uintptr_t k_recent, int64_t k_recent_numel, uintptr_t v, int64_t v_numel, uintptr_t starts,
    int64_t starts_numel, uintptr_t lengths, int64_t lengths_numel, uintptr_t workspace,
    int64_t workspace_numel, int64_t batch, int64_t hq, int64_t hkv, int64_t s_len, int64_t lp,
    int64_t lr, int64_t dim, int64_t kept, int64_t dv, int64_t kp_sb, int64_t kp_sh,
    int64_t kp_sl, int64_t kr_sb, int64_t kr_sh, int64_t kr_sl, int64_t v_sb, int64_t v_sh,
    int64_t v_sl, int dtype, double scale, int64_t chunk_keys, int device, uintptr_t stream);

// The CPU launcher's parameters.
void think_channel_scores(uintptr_t out, int64_t out_numel, uintptr_t q_window,
                          int64_t q_window_numel, uintptr_t k, int64_t k_numel, int64_t batch,
                          int64_t hq, int64_t hkv, int64_t window, int64_t length, int64_t dim,
                          int dtype, int device, uintptr_t stream);

// ---- speculative decoding (cuda/speculative.cu) ----
// The CPU launcher's parameters plus an int64 `workspace` [B, 2K + 1, 2]: per-row statistics. Draft tokens are device data, not
// re-read on the host: a token outside [0, V) reads nothing and is rejected.
void accept_tokens(uintptr_t tokens_out, int64_t tokens_out_numel, uintptr_t counts_out,
                   int64_t counts_out_numel, uintptr_t draft_tokens, int64_t draft_tokens_numel,
                   uintptr_t target_logits, int64_t target_logits_numel, uintptr_t draft_logits,
                   int64_t draft_logits_numel, uintptr_t target_thr, int64_t target_thr_numel,
                   uintptr_t draft_thr, int64_t draft_thr_numel, uintptr_t accept_u,
                   int64_t accept_u_numel, uintptr_t race_u, int64_t race_u_numel,
                   uintptr_t seeds, int64_t seeds_numel, uintptr_t workspace,
                   int64_t workspace_numel, int64_t batch, int64_t k, int64_t vocab, int dtype,
                   double temperature, int per_row_seeds, int device, uintptr_t stream);

// The CPU launcher's parameters.
void accept_steps(uintptr_t accepted_out, int64_t accepted_out_numel, uintptr_t weights_out,
                  int64_t weights_out_numel, uintptr_t rewards, int64_t rewards_numel,
                  uintptr_t uniforms, int64_t uniforms_numel, int64_t n, int kind,
                  double threshold, double sharpness, uint64_t seed, int device,
                  uintptr_t stream);

}  // namespace cuda
}  // namespace ponder
