// CUDA launchers, one per op: the parameters of the CPU launcher of the same name (cpu/ops.inc:
// each buffer as the pair (address, element count), checked like there) with the CUDA device index and the stream handle torch is using (as integers) in place of the
// thread count. Each runs asynchronously on that stream, leaves the caller's current device as it
// was, and throws std::runtime_error with the CUDA error string if the launch fails
// (cuda/common.cuh).
#pragma once

#include <cstdint>

// The ops ponder._cuda exports, by name (bind_cuda.cpp). A new op: declare it below, define it
// in its .cu file, add its name here.
#define PONDER_CUDA_OPS(X) X(ula_step) X(proximal_step) X(uld_step) X(mala_accept)

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

}  // namespace cuda
}  // namespace ponder
