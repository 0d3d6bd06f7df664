// What every CPU kernel file includes: its launchers' declarations, the storage types and the
// argument checks. CMakeLists.txt (ponder_cpu_isa) compiles each kernel file once per instruction
// set with PONDER_CPU_ISA naming the namespace of that copy; a file compiled on its own (an
// editor's syntax check) gets the baseline one.
#pragma once

// Before any include: the shared headers (ponder/common.h: PONDER_NAMESPACE_BEGIN) name their
// namespace after the copy too.
#ifndef PONDER_CPU_ISA
#define PONDER_CPU_ISA isa_default
#endif

#include <algorithm>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/dtype.h"
#include "cpu/ops.h"
#include "ponder/check.h"

// Like everything a kernel file compiles, the helpers below live in the namespace of the copy:
// inline functions outside it would be one weak symbol for all copies (ponder/common.h).
namespace ponder::cpu::PONDER_CPU_ISA {

// The OpenMP team size for a launcher's `threads` argument (torch's thread count): below 1 is a
// ValueError; above the processors this process may run on it is clamped to them. More threads
// than processors never speed a kernel up, and an absurd count (2^31 - 1) would make OpenMP abort
// the process when thread creation fails. Results never depend on the thread count, so the clamp
// changes no output. The processor count is read once (it costs a system call).
inline int check_threads(const char* op, int threads) {
  PONDER_CHECK(threads >= 1, op << ": threads must be >= 1, got " << threads);
#ifdef _OPENMP
  static const int procs = std::max(1, omp_get_num_procs());
  return std::min(threads, procs);
#else
  return 1;
#endif
}

}  // namespace ponder::cpu::PONDER_CPU_ISA
