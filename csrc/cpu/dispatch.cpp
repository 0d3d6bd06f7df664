// The instruction set the CPU entry points use (cpu/dispatch.h): the widest this CPU supports,
// capped by PONDER_CPU_ISA=default|avx2|avx512|avx512bf16.
#include "cpu/dispatch.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace ponder {
namespace cpu {
namespace {

Isa detect() {
  Isa cap = Isa::kAvx512Bf16;
  if (const char* env = std::getenv("PONDER_CPU_ISA")) {
    if (std::strcmp(env, "default") == 0) cap = Isa::kDefault;
    if (std::strcmp(env, "avx2") == 0) cap = Isa::kAvx2;
    if (std::strcmp(env, "avx512") == 0) cap = Isa::kAvx512;
  }
#if defined(PONDER_HAVE_X86_ISAS) && (defined(__x86_64__) || defined(_M_X64))
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512bw");
#if defined(PONDER_HAVE_AVX512BF16)
  if (avx512 && __builtin_cpu_supports("avx512bf16") && cap == Isa::kAvx512Bf16)
    return Isa::kAvx512Bf16;
#endif
  if (avx512 && (cap == Isa::kAvx512 || cap == Isa::kAvx512Bf16)) return Isa::kAvx512;
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
    case Isa::kAvx512Bf16: return "avx512bf16";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "default";
  }
}

bool advise_huge_pages(uintptr_t address, int64_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  // Only whole 2 MiB pages inside the buffer: the kernel backs an aligned 2 MiB range with one
  // huge page when the first write faults it in, and a range it cannot use is left as it was.
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (nbytes <= 0) return false;
  const uintptr_t lo = (address + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = (address + static_cast<uintptr_t>(nbytes)) & ~(kHuge - 1);
  if (hi <= lo) return false;
  return madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE) == 0;
#else
  (void)address;
  (void)nbytes;
  return false;
#endif
}

}  // namespace cpu
}  // namespace ponder
