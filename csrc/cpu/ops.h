// CPU launchers, one per op. Tensors arrive as raw addresses of contiguous buffers (validated by
// the Python layer, re-checked here), a dtype code (ponder/common.h) and the thread count torch
// uses. A null `noise` / `uniforms` address means: draw from the counter-based generator `seed`.
#pragma once

#include <cstdint>

// The ops ponder._C exports, by name. Each one is declared once (cpu/ops.inc), defined in its
// kernel file, and bound (bind_cpu.cpp) to the entry point that picks the instruction set
// (PONDER_CPU_ENTRY, cpu/dispatch.h).
#define PONDER_CPU_OPS(X) PONDER_CPU_PLAIN_OPS(X) PONDER_CPU_BF16_OPS(X)
// The ops compiled for every instruction set but AVX512-BF16 ...
#define PONDER_CPU_PLAIN_OPS(X)                                                    \
  X(ula_step) X(proximal_step) X(uld_step) X(mala_accept)                         \
  X(prm_steps)                                                                     \
  X(accept_tokens) X(accept_steps)                                               \
  X(lm_head_chunk_forward) X(lm_head_chunk_backward)
// ... and those of think.cpp, compiled for AVX512-BF16 too (CMakeLists.txt: only that file,
// so the fourth copy costs one file's build time).
#define PONDER_CPU_BF16_OPS(X) X(think_pruned_decode_attention) X(think_channel_scores)

namespace ponder {
namespace cpu {

// Every kernel file is compiled once per instruction set, into these namespaces (CMakeLists.txt:
// ponder_cpu_isa); cpu/dispatch.cpp chooses among them at run time. Without x86-64 only
// isa_default is compiled; isa_avx512bf16 holds only PONDER_CPU_BF16_OPS (the rest are declared
// there, never defined nor used).
namespace isa_default {
#include "cpu/ops.inc"
}  // namespace isa_default
namespace isa_avx2 {
#include "cpu/ops.inc"
}  // namespace isa_avx2
namespace isa_avx512 {
#include "cpu/ops.inc"
}  // namespace isa_avx512
namespace isa_avx512bf16 {
#include "cpu/ops.inc"
}  // namespace isa_avx512bf16

}  // namespace cpu
}  // namespace ponder
