// Run-time choice of the instruction set: each CPU launcher is compiled for baseline x86-64 (or
// the host's baseline elsewhere) and, on x86-64, again with AVX2 + FMA and with AVX-512 (every
// kernel file, CMakeLists.txt: ponder_cpu_isa); the ThinK kernels (think.cpp) also with AVX-512
// + AVX512-BF16 (vdpbf16ps: bf16 dot products without widening to fp32), where the compiler
// has it. An op's entry point calls the widest copy this CPU supports, so one wheel is fast
// everywhere; an op without an AVX512-BF16 copy runs its AVX-512 one on such a CPU.
// PONDER_CPU_ISA=default|avx2|avx512|avx512bf16 in the environment caps the choice (tests and
// triage); a level the CPU lacks falls to the widest it has below.
#pragma once

#include "cpu/ops.h"

namespace ponder {
namespace cpu {

enum class Isa { kDefault, kAvx2, kAvx512, kAvx512Bf16 };

// The instruction set the entry points use, chosen on the first call.
Isa isa();
// The same as a name: "avx512bf16", "avx512", "avx2" or "default".
const char* active_isa();

// madvise(MADV_HUGEPAGE) on the whole 2 MiB pages inside [address, address + nbytes), for an
// output buffer the ops have just allocated and not yet touched: a fresh large tensor is a new
// mapping, and faulting it in 4 KiB at a time (a fault and a page clear each) costs more than
// the kernel's own reads and writes. True where the advice was taken; false on non-Linux, for a
// buffer holding no whole huge page, or when the kernel refuses (THP disabled).
bool advise_huge_pages(uintptr_t address, int64_t nbytes);

// The entry point of one op: the launcher's copy for isa(). Built from the launcher's declared
// type, so its parameters are written only in cpu/ops.inc.
template <class Launcher>
struct IsaDispatch;
template <class... Args>
struct IsaDispatch<void(Args...)> {
  template <void (*Default)(Args...), void (*Avx2)(Args...), void (*Avx512)(Args...),
            void (*Avx512Bf16)(Args...)>
  static void call(Args... args) {
    switch (isa()) {
      case Isa::kAvx512Bf16: return Avx512Bf16(args...);
      case Isa::kAvx512: return Avx512(args...);
      case Isa::kAvx2: return Avx2(args...);
      default: return Default(args...);
    }
  }
};

}  // namespace cpu
}  // namespace ponder

// The entry point of op `name` (one of PONDER_CPU_OPS), as a function pointer;
// PONDER_CPU_ENTRY_BF16 for the ops of PONDER_CPU_BF16_OPS, which have an AVX512-BF16 copy.
#if defined(PONDER_HAVE_X86_ISAS)
#define PONDER_CPU_ENTRY_WITH(name, bf16)                                            \
  (&::ponder::cpu::IsaDispatch<decltype(::ponder::cpu::isa_default::name)>::call<   \
      &::ponder::cpu::isa_default::name, &::ponder::cpu::isa_avx2::name,            \
      &::ponder::cpu::isa_avx512::name, &::ponder::cpu::bf16::name>)
#define PONDER_CPU_ENTRY(name) PONDER_CPU_ENTRY_WITH(name, isa_avx512)
#if defined(PONDER_HAVE_AVX512BF16)
#define PONDER_CPU_ENTRY_BF16(name) PONDER_CPU_ENTRY_WITH(name, isa_avx512bf16)
#else
#define PONDER_CPU_ENTRY_BF16(name) PONDER_CPU_ENTRY_WITH(name, isa_avx512)
#endif
#else
#define PONDER_CPU_ENTRY(name)                                                       \
  (&::ponder::cpu::IsaDispatch<decltype(::ponder::cpu::isa_default::name)>::call<   \
      &::ponder::cpu::isa_default::name, &::ponder::cpu::isa_default::name,         \
      &::ponder::cpu::isa_default::name, &::ponder::cpu::isa_default::name>)
#define PONDER_CPU_ENTRY_BF16(name) PONDER_CPU_ENTRY(name)
#endif
