// The instruction set the CPU entry points use (cpu/dispatch.h): the widest this CPU supports,
// capped by PONDER_CPU_ISA=default|avx2.
#include "cpu/dispatch.h"

#include <cstdlib>
#include <cstring>

namespace ponder {
namespace cpu {
namespace {

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

}  // namespace

Isa isa() {
  static const Isa chosen = detect();
  return chosen;
}

const char* active_isa() {
  switch (isa()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "default";
  }
}

}  // namespace cpu
}  // namespace ponder
