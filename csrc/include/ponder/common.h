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

namespace ponder {

// Dtype codes passed from Python (ponder/_backend.py: DTYPE_CODES) as plain integers.
enum DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

}  // namespace ponder
