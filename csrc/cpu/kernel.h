// What every CPU kernel file includes: its launchers' declarations, the storage types and the
// argument checks. CMakeLists.txt (ponder_cpu_isa) compiles each kernel file once per instruction
// set with PONDER_CPU_ISA naming the namespace of that copy; a file compiled on its own (an
// editor's syntax check) gets the baseline one.
#pragma once

#include "cpu/dtype.h"
#include "cpu/ops.h"
#include "ponder/check.h"

#ifndef PONDER_CPU_ISA
#define PONDER_CPU_ISA isa_default
#endif
