// CUDA launchers, one per op: the parameters of the CPU launcher of the same name (cpu/ops.inc)
// with the CUDA device index and the stream handle torch is using (as integers) in place of the
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

void ula_step(uintptr_t out, uintptr_t x, uintptr_t grad_logp, uintptr_t noise, int64_t n,
              int dtype, double drift, double noise_scale, uint64_t seed, int device,
              uintptr_t stream);

void proximal_step(uintptr_t out, uintptr_t z, uintptr_t y, uintptr_t grad_logp, uintptr_t noise,
                   int64_t n, int dtype, double keep, double pull, double drift,
                   double noise_scale, uint64_t seed, int device, uintptr_t stream);

void uld_step(uintptr_t x_out, uintptr_t v_out, uintptr_t x, uintptr_t v, uintptr_t grad_logp,
              uintptr_t noise, int64_t n, int dtype, double a, double b, double e, double sv,
              double sxv, double sx, uint64_t seed, int device, uintptr_t stream);

void mala_accept(uintptr_t x_out, uintptr_t logp_out, uintptr_t grad_out, uintptr_t accepted,
                 uintptr_t x, uintptr_t logp, uintptr_t grad_logp, uintptr_t x_prop,
                 uintptr_t logp_prop, uintptr_t grad_logp_prop, uintptr_t uniforms,
                 int64_t chains, int64_t dim, int dtype, double step_size, uint64_t seed,
                 int device, uintptr_t stream);

}  // namespace cuda
}  // namespace ponder
