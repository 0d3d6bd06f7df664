// CPU storage types for fp16 / bf16 and the load/store conversions the launchers use; the dtype
// dispatch and the compute type acc_t are shared with CUDA (ponder/dtype.h).
#pragma once

#include <cstdint>
#include <cstring>

#include "ponder/dtype.h"

// Included through cpu/kernel.h, which names the instruction-set copy: these inline functions
// live in its namespace, so no two copies share a symbol (ponder/common.h).
#ifndef PONDER_CPU_ISA
#error "include cpu/kernel.h, not cpu/dtype.h"
#endif

namespace ponder::cpu::PONDER_CPU_ISA {

struct Half { uint16_t bits; };
struct BFloat16 { uint16_t bits; };

inline uint32_t f32_bits(float x) { uint32_t u; std::memcpy(&u, &x, 4); return u; }
inline float f32_from_bits(uint32_t u) { float x; std::memcpy(&x, &u, 4); return x; }

inline float load(float x) { return x; }
inline double load(double x) { return x; }
inline float load(BFloat16 x) { return f32_from_bits(static_cast<uint32_t>(x.bits) << 16); }
inline float load(Half h) {
  // Exact half -> float (subnormals through a float subtraction, inf/NaN through the exponent).
  uint32_t o = static_cast<uint32_t>(h.bits & 0x7FFFu) << 13;
  const uint32_t exp = o & 0x0F800000u;
  o += (127u - 15u) << 23;
  if (exp == 0x0F800000u) {
    o += (128u - 16u) << 23;
  } else if (exp == 0) {
    o += 1u << 23;
    o = f32_bits(f32_from_bits(o) - f32_from_bits(113u << 23));
  }
  return f32_from_bits(o | (static_cast<uint32_t>(h.bits & 0x8000u) << 16));
}

inline void store(float& dst, float x) { dst = x; }
inline void store(double& dst, double x) { dst = x; }
inline BFloat16 to_bf16(float x) {
  const uint32_t u = f32_bits(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return BFloat16{static_cast<uint16_t>((u >> 16) | 0x40u)};
  return BFloat16{static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16)};  // to nearest even
}
inline Half to_half(float x) {
  // float -> half, round to nearest even, overflow to inf, NaN stays NaN.
  uint32_t f = f32_bits(x);
  const uint32_t sign = f & 0x80000000u;
  f ^= sign;
  uint32_t o;
  if (f >= (143u << 23)) {
    o = f > 0x7F800000u ? 0x7E00u : 0x7C00u;
  } else if (f < (113u << 23)) {
    const uint32_t magic = 126u << 23;
    o = f32_bits(f32_from_bits(f) + f32_from_bits(magic)) - magic;
  } else {
    const uint32_t mant_odd = (f >> 13) & 1u;
    f += (static_cast<uint32_t>(15 - 127) << 23) + 0xFFFu;
    f += mant_odd;
    o = f >> 13;
  }
  return Half{static_cast<uint16_t>(o | (sign >> 16))};
}

inline void store(BFloat16& dst, float x) { dst = to_bf16(x); }
inline void store(Half& dst, float x) { dst = to_half(x); }

// f(T{}) with T the CPU storage type of dtype code `dtype` (ponder/dtype.h).
template <class F>
void dispatch_dtype(int dtype, const char* op, F&& f) {
  dispatch_storage<Half, BFloat16>(dtype, op, f);
}

// The same for kernels that compute in float only: fp64 is refused.
template <class F>
void dispatch_float_dtype(int dtype, const char* op, F&& f) {
  dispatch_storage<Half, BFloat16, /*kWithDouble=*/false>(dtype, op, f);
}

}  // namespace ponder::cpu::PONDER_CPU_ISA
