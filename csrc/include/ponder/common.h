// Shared definitions for ponder's framework-free kernel headers.
#pragma once

#include <cstdint>

// Per-element and per-row math is written once and compiled for both the CPU launchers and the
// CUDA kernels: under nvcc these functions become __host__ __device__.
#if defined(__CUDACC__)
#define PONDER_HD __host__ __device__ __forceinline__
#else
#define PONDER_HD inline
#endif

// Every header in ponder/ opens the namespace with PONDER_NAMESPACE_BEGIN, never with a plain
// `namespace ponder {`. The host build compiles each CPU kernel file once per instruction set
// (CMakeLists.txt: ponder_cpu_isa, with PONDER_CPU_ISA naming the copy), and every function these
// headers define is inline: a weak symbol, of which the linker keeps ONE for all the copies. The
// AVX-512 copy of a function would then run on an AVX2-only machine (SIGILL) wherever a call is
// not inlined, or the baseline copy would run in the fast paths. So in those builds the headers'
// definitions live in an inline namespace named after the copy: the source still writes
// ponder::lm_head::forward_row, the symbol is ponder::isa_avx2::lm_head::forward_row.
// tests/test_cpu_isa.py (test_isa_copies_share_no_symbol) checks the objects for a symbol that two
// copies define. nvcc and host files without PONDER_CPU_ISA (the bindings) get plain `ponder`.
#if defined(PONDER_CPU_ISA) && !defined(__CUDACC__)
#define PONDER_NAMESPACE_BEGIN namespace ponder { inline namespace PONDER_CPU_ISA {
#define PONDER_NAMESPACE_END } }
#else
#define PONDER_NAMESPACE_BEGIN namespace ponder {
#define PONDER_NAMESPACE_END }
#endif

// Fully unroll short fixed-count loops so that the loops around them vectorise.
#if defined(__CUDACC__)
#define PONDER_UNROLL _Pragma("unroll")
#elif defined(__clang__)
#define PONDER_UNROLL _Pragma("clang loop unroll(full)")
#elif defined(__GNUC__)
#define PONDER_UNROLL _Pragma("GCC unroll 16")
#else
#define PONDER_UNROLL
#endif

PONDER_NAMESPACE_BEGIN

// Dtype codes passed from Python (ponder/_backend.py: DTYPE_CODES) as plain integers.
enum DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

PONDER_NAMESPACE_END
