// The dtype dispatch shared by the CPU and CUDA launchers. A dtype code (ponder/common.h) names
// the storage type of a launcher's tensors; the math runs in acc_t<T>: float for fp32, fp16 and
// bf16 storage, double for fp64. Each backend brings its own 16-bit storage types and their
// load/store conversions (cpu/dtype.h, cuda/common.cuh).
#pragma once

#include "ponder/check.h"
#include "ponder/common.h"

PONDER_NAMESPACE_BEGIN

template <class T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <class T> using acc_t = typename AccOf<T>::type;

// f(T{}) with T the storage type of dtype code `dtype`: float, double, or the backend's Half /
// BFloat16. With kWithDouble = false (kernels that compute in float only) fp64 is refused like
// an unknown code: a ValueError naming `op`.
template <class Half, class BFloat16, bool kWithDouble = true, class F>
void dispatch_storage(int dtype, const char* op, F&& f) {
  if (dtype == kFloat32) return f(float{});
  if (dtype == kFloat16) return f(Half{});
  if (dtype == kBFloat16) return f(BFloat16{});
  if constexpr (kWithDouble) {
    if (dtype == kFloat64) return f(double{});
    PONDER_CHECK(false, op << ": unknown dtype code " << dtype);
  } else {
    PONDER_CHECK(false, op << ": dtype code " << dtype << " is not fp32/fp16/bf16");
  }
}

PONDER_NAMESPACE_END
