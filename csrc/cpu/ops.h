// CPU launchers, one per op. Tensors arrive as raw addresses of contiguous buffers (validated by
// the Python layer, re-checked here), a dtype code (ponder/common.h) and the thread count torch
// uses. A null `noise` / `uniforms` address means: draw from the counter-based generator `seed`.
#pragma once

#include <cstdint>

namespace ponder {
namespace cpu {

void ula_step(uintptr_t out, uintptr_t x, uintptr_t grad_logp, uintptr_t noise, int64_t n,
              int dtype, double drift, double noise_scale, uint64_t seed, int threads);

void proximal_step(uintptr_t out, uintptr_t z, uintptr_t y, uintptr_t grad_logp, uintptr_t noise,
                   int64_t n, int dtype, double keep, double pull, double drift,
                   double noise_scale, uint64_t seed, int threads);

// noise (if given) holds 2 n values: n_v first, then n_x.
void uld_step(uintptr_t x_out, uintptr_t v_out, uintptr_t x, uintptr_t v, uintptr_t grad_logp,
              uintptr_t noise, int64_t n, int dtype, double a, double b, double e, double sv,
              double sxv, double sx, uint64_t seed, int threads);

// x, grad_logp, x_prop, grad_logp_prop, x_out, grad_out: [chains, dim] of `dtype`;
// logp, logp_prop, logp_out, uniforms: [chains] float64; accepted: [chains] bool (1 byte).
void mala_accept(uintptr_t x_out, uintptr_t logp_out, uintptr_t grad_out, uintptr_t accepted,
                 uintptr_t x, uintptr_t logp, uintptr_t grad_logp, uintptr_t x_prop,
                 uintptr_t logp_prop, uintptr_t grad_logp_prop, uintptr_t uniforms,
                 int64_t chains, int64_t dim, int dtype, double step_size, uint64_t seed,
                 int threads);

}  // namespace cpu
}  // namespace ponder
