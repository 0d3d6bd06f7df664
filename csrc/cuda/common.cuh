// What every CUDA launcher shares. A launcher runs these steps in this order:
//   1. validate its arguments (PONDER_CHECK, check_buffer: ponder/check.h) -> ValueError;
//   2. DeviceGuard guard(device, op): the tensors' device is current until the launcher returns;
//   3. stream_from(stream): torch's current stream on that device, passed from Python;
//   4. dispatch_dtype(dtype, op, ...): the kernel template for the storage type, launched on it;
//   5. check_launch(op): a failed launch is a RuntimeError naming the op and the CUDA error.
// launch() below runs steps 2-5, so a launcher is its validation and its kernel launch. Kernels
// are asynchronous: errors inside a kernel surface at the next synchronising call.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <initializer_list>
#include <sstream>
#include <stdexcept>

#include "ponder/check.h"
#include "ponder/dtype.h"

namespace ponder {
namespace cuda {

// Storage <-> compute conversions (the CUDA counterparts of cpu/dtype.h's): fp16 and bf16 are
// computed in float, rounded to nearest even on the way back.
__device__ __forceinline__ float load(float x) { return x; }
__device__ __forceinline__ double load(double x) { return x; }
__device__ __forceinline__ float load(__half x) { return __half2float(x); }
__device__ __forceinline__ float load(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void store(float& d, float x) { d = x; }
__device__ __forceinline__ void store(double& d, double x) { d = x; }
__device__ __forceinline__ void store(__half& d, float x) { d = __float2half_rn(x); }
__device__ __forceinline__ void store(__nv_bfloat16& d, float x) { d = __float2bfloat16_rn(x); }

// f(T{}) with T the CUDA storage type of dtype code `dtype` (ponder/dtype.h). With
// kWithDouble = false (kernels that compute in float only) fp64 is a ValueError naming `op`.
template <bool kWithDouble = true, class F>
void dispatch_dtype(int dtype, const char* op, F&& f) {
  dispatch_storage<__half, __nv_bfloat16, kWithDouble>(dtype, op, f);
}

// Whether a strided tensor's rows all start on a 16-byte boundary: its address and every stride
// (in elements of `bytes` bytes) are multiples of 16 bytes. Such rows are read with 16-byte loads.
inline bool aligned16(uintptr_t address, int64_t bytes, std::initializer_list<int64_t> strides) {
  if (address % 16 != 0) return false;
  for (const int64_t s : strides) {
    if ((s * bytes) % 16 != 0) return false;
  }
  return true;
}

// Eight consecutive values row[c0 .. c0 + 8) as float, zeros at and past n. `vec`: the row
// starts on a 16-byte boundary (aligned16), so a full group of 16-bit values is one 16-byte load
// and a full group of floats two (c0 is a multiple of 8).
template <class T>
__device__ __forceinline__ void load8(const T* row, int64_t c0, int64_t n, bool vec,
                                      float out[8]) {
  static_assert(sizeof(T) == 2 || sizeof(T) == 4, "load8 reads 16-bit or 32-bit storage");
  if (vec && c0 + 8 <= n) {
    if constexpr (sizeof(T) == 2) {
      const uint4 raw = *reinterpret_cast<const uint4*>(row + c0);
      const T* h = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int e = 0; e < 8; ++e) out[e] = load(h[e]);
    } else {
      const float4 a = *reinterpret_cast<const float4*>(row + c0);
      const float4 b = *reinterpret_cast<const float4*>(row + c0 + 4);
      out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w;
      out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
    }
    return;
  }
#pragma unroll
  for (int e = 0; e < 8; ++e) out[e] = c0 + e < n ? static_cast<float>(load(row[c0 + e])) : 0.0f;
}

// A CUDA runtime error as std::runtime_error (RuntimeError in Python), naming the op and the call.
inline void check_cuda(cudaError_t err, const char* op, const char* what) {
  if (err != cudaSuccess) {
    std::ostringstream msg;
    msg << "ponder._cuda." << op << ": " << what << " failed: " << cudaGetErrorString(err);
    throw std::runtime_error(msg.str());
  }
}

// Makes `device` current for the guard's scope and gives the caller's device back on exit: the
// launchers run on a thread torch (or the user) also uses, whose current device is theirs.
class DeviceGuard {
 public:
  DeviceGuard(int device, const char* op) : device_(device) {
    PONDER_CHECK(device >= 0, op << ": device index must be >= 0, got " << device);
    check_cuda(cudaGetDevice(&previous_), op, "cudaGetDevice");
    if (device_ != previous_) check_cuda(cudaSetDevice(device_), op, "cudaSetDevice");
  }
  ~DeviceGuard() {
    // A destructor must not throw; clear the error so that no later check_launch reports it.
    if (device_ != previous_ && cudaSetDevice(previous_) != cudaSuccess) cudaGetLastError();
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int device_;
  int previous_ = 0;
};

// The stream handle torch passes (torch.cuda.Stream.cuda_stream, an integer).
inline cudaStream_t stream_from(uintptr_t handle) {
  return reinterpret_cast<cudaStream_t>(handle);
}

// After a kernel launch: a bad configuration or a missing kernel image is reported here.
inline void check_launch(const char* op) {
  check_cuda(cudaGetLastError(), op, "kernel launch");
}

// Steps 2-5 for a launcher whose arguments are valid: with `device` current, kernel(T{}, stream)
// launches the kernel for storage type T on torch's stream. Nothing is launched without work.
// kWithDouble = false: the op computes in float only and refuses fp64 (before any CUDA call).
template <bool kWithDouble = true, class Kernel>
void launch(const char* op, int device, uintptr_t stream, int dtype, int64_t work,
            Kernel&& kernel) {
  if constexpr (!kWithDouble) dispatch_dtype<false>(dtype, op, [](auto) {});  // validate only
  DeviceGuard guard(device, op);
  if (work == 0) return;
  const cudaStream_t s = stream_from(stream);
  dispatch_dtype<kWithDouble>(dtype, op, [&](auto tag) { kernel(tag, s); });
  check_launch(op);
}

}  // namespace cuda
}  // namespace ponder
