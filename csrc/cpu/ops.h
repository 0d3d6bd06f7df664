// CPU launchers, one per op. Tensors arrive as raw addresses of contiguous buffers (validated by
// the Python layer, re-checked here), a dtype code (ponder/common.h) and the thread count torch
// uses. A null `noise` / `uniforms` address means: draw from the counter-based generator `seed`.
// PONDER_CPU_ISA=default|avx2 in the environment caps the instruction set (tests and triage).
#pragma once

#include <cstdint>

namespace ponder {
namespace cpu {

#include "cpu/ops.inc"

// langevin.cpp is compiled once per instruction set into these namespaces (CMakeLists.txt);
// cpu/dispatch.cpp chooses among them at run time.
namespace isa_default {
#include "cpu/ops.inc"
}  // namespace isa_default
namespace isa_avx2 {
#include "cpu/ops.inc"
}  // namespace isa_avx2
namespace isa_avx512 {
#include "cpu/ops.inc"
}  // namespace isa_avx512

// The instruction set the entry points use: "avx512", "avx2" or "default".
const char* active_isa();

}  // namespace cpu
}  // namespace ponder
