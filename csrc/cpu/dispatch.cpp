// Run-time choice of the instruction set for the CPU launchers: cpu/langevin.cpp is compiled for
// baseline x86-64 (or the host's baseline elsewhere) and, on x86-64, again with AVX2 + FMA; the
// entry points call the widest copy this CPU supports, so one wheel is fast everywhere.
#include <cstdlib>
#include <cstring>

#include "cpu/ops.h"

namespace ponder {
namespace cpu {
namespace {

enum class Isa { kDefault, kAvx2 };

Isa detect() {
  const char* cap = std::getenv("PONDER_CPU_ISA");
  if (cap != nullptr && std::strcmp(cap, "default") == 0) return Isa::kDefault;
#if defined(PONDER_HAVE_AVX2) && (defined(__x86_64__) || defined(_M_X64))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kDefault;
}

Isa isa() {
  static const Isa chosen = detect();
  return chosen;
}

}  // namespace

#if defined(PONDER_HAVE_AVX2)
#define PONDER_ISA_CALL(fn, ...)                                 \
  if (isa() == Isa::kAvx2) return isa_avx2::fn(__VA_ARGS__);     \
  return isa_default::fn(__VA_ARGS__)
#else
#define PONDER_ISA_CALL(fn, ...) return isa_default::fn(__VA_ARGS__)
#endif

const char* active_isa() { return isa() == Isa::kAvx2 ? "avx2" : "default"; }

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

}  // namespace cpu
}  // namespace ponder
