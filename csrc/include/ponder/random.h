// Counter-based random numbers shared by the CPU and CUDA kernels: Philox4x32-10 (Salmon et al.,
// "Parallel random numbers: as easy as 1, 2, 3", SC'11) and Box-Muller normals. Element i of a
// stream draws from counter block i / 4, lane i % 4, so any thread can generate any element
// without state, and results never depend on the thread count or the launch shape.
#pragma once

#include <cmath>
#include <cstring>

#include "ponder/common.h"

PONDER_NAMESPACE_BEGIN
namespace random {

PONDER_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

struct U32x4 {
  uint32_t v0, v1, v2, v3;
};

template <class Acc>
struct Normal4 {
  Acc n0, n1, n2, n3;
};

// Philox4x32 with 10 rounds. counter = (block_lo, block_hi, stream, 0), key = the 64-bit seed.
// Returned by value (no arrays) so that loops over blocks vectorise.
PONDER_HD U32x4 philox4x32_10(uint64_t block, uint32_t stream, uint64_t seed) {
  uint32_t c0 = static_cast<uint32_t>(block), c1 = static_cast<uint32_t>(block >> 32);
  uint32_t c2 = stream, c3 = 0u;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  PONDER_UNROLL
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(0xD2511F53u, c0, hi0, lo0);
    mulhilo32(0xCD9E8D57u, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return U32x4{c0, c1, c2, c3};
}

// Uniform in (0, 1): never exactly 0 (Box-Muller takes its log) and, in double, never 1.
PONDER_HD float uniform_open_f32(uint32_t r) {
  return static_cast<float>(static_cast<int>(r >> 8)) * 5.9604644775390625e-08f +
         2.98023223876953125e-08f;
}
PONDER_HD double uniform_open_f64(uint32_t r) {
  return (static_cast<double>(r) + 0.5) * 2.3283064365386963e-10;
}

PONDER_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}
PONDER_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}

// Natural log of a positive, finite, normal float, without branches so that loops over it
// vectorise: x = m * 2^e with m in [sqrt(1/2), sqrt(2)) (found by offsetting the bits so the
// exponent field rolls over at sqrt(1/2)), then log m = 2 atanh(t), t = (m - 1) / (m + 1), by its
// odd series (|t| <= 0.1716: truncation error < 1e-9, below float rounding).
PONDER_HD float log_f32(float x) {
  constexpr uint32_t kSqrtHalf = 0x3F3504F3u;  // bits of sqrt(1/2)
  const uint32_t shifted = float_bits(x) + (0x3F800000u - kSqrtHalf);
  const int e = static_cast<int>(shifted >> 23) - 127;
  const float m = bits_float((shifted & 0x007FFFFFu) + kSqrtHalf);
  const float t = (m - 1.0f) / (m + 1.0f);
  const float t2 = t * t;
  const float series =
      1.0f + t2 * (1.0f / 3 + t2 * (1.0f / 5 + t2 * (1.0f / 7 + t2 * (1.0f / 9))));
  return static_cast<float>(e) * 0.69314718055994531f + 2.0f * t * series;
}

// sin and cos of 2 pi u for u in [0, 1), without branches: the nearest quarter turn, then Taylor
// polynomials on [-pi/4, pi/4] (error < 4e-9), rotated into place.
PONDER_HD void sincos_turns_f32(float u, float& s, float& c) {
  // Truncation is floor here (the argument is >= 0) and, unlike floorf, vectorises on SSE2.
  const int qi = static_cast<int>(4.0f * u + 0.5f);  // 0..4
  const float a = (4.0f * u - static_cast<float>(qi)) * 1.57079632679489662f;  // |a| <= pi/4
  const float a2 = a * a;
  const float sa = a * (1.0f + a2 * (-1.0f / 6 + a2 * (1.0f / 120 + a2 * (-1.0f / 5040 +
                                                          a2 * (1.0f / 362880)))));
  const float ca = 1.0f + a2 * (-0.5f + a2 * (1.0f / 24 + a2 * (-1.0f / 720 +
                                                          a2 * (1.0f / 40320))));
  // Rotate (cos a, sin a) by quadrant * 90 degrees: swap on odd quadrants, then flip signs
  // (cos is negative in quadrants 1 and 2, sin in 2 and 3) with integer ops.
  const uint32_t quadrant = static_cast<uint32_t>(qi) & 3u;
  const uint32_t odd = quadrant & 1u;
  const float c0 = odd ? sa : ca;
  const float s0 = odd ? ca : sa;
  c = bits_float(float_bits(c0) ^ (((quadrant + 1u) & 2u) << 30));
  s = bits_float(float_bits(s0) ^ ((quadrant & 2u) << 30));
}

// Four standard normals from the four words of one Philox block (two Box-Muller pairs).
PONDER_HD Normal4<float> box_muller4_f32(U32x4 r) {
  const float radius0 = sqrtf(-2.0f * log_f32(uniform_open_f32(r.v0)));
  const float radius1 = sqrtf(-2.0f * log_f32(uniform_open_f32(r.v2)));
  float s0, c0, s1, c1;
  sincos_turns_f32(uniform_open_f32(r.v1), s0, c0);
  sincos_turns_f32(uniform_open_f32(r.v3), s1, c1);
  return Normal4<float>{radius0 * c0, radius0 * s0, radius1 * c1, radius1 * s1};
}

// Four standard normals from one Philox block.
PONDER_HD Normal4<float> normal4_f32(uint64_t block, uint32_t stream, uint64_t seed) {
  return box_muller4_f32(philox4x32_10(block, stream, seed));
}

PONDER_HD Normal4<double> normal4_f64(uint64_t block, uint32_t stream, uint64_t seed) {
  const U32x4 r = philox4x32_10(block, stream, seed);
  const double radius0 = sqrt(-2.0 * log(uniform_open_f64(r.v0)));
  const double radius1 = sqrt(-2.0 * log(uniform_open_f64(r.v2)));
  const double angle0 = 6.283185307179586 * uniform_open_f64(r.v1);
  const double angle1 = 6.283185307179586 * uniform_open_f64(r.v3);
  return Normal4<double>{radius0 * cos(angle0), radius0 * sin(angle0), radius1 * cos(angle1),
                         radius1 * sin(angle1)};
}

// Normals in the compute type: float math for float32/16/bf16 storage, double for float64.
template <class Acc> PONDER_HD Normal4<Acc> normal4(uint64_t block, uint32_t stream, uint64_t seed);
template <> PONDER_HD Normal4<float> normal4<float>(uint64_t block, uint32_t stream, uint64_t seed) {
  return normal4_f32(block, stream, seed);
}
template <> PONDER_HD Normal4<double> normal4<double>(uint64_t block, uint32_t stream,
                                                      uint64_t seed) {
  return normal4_f64(block, stream, seed);
}

// One uniform in (0, 1) per index, as double (for Metropolis-Hastings tests).
PONDER_HD double uniform_at(uint64_t index, uint32_t stream, uint64_t seed) {
  return uniform_open_f64(philox4x32_10(index, stream, seed).v0);
}

}  // namespace random
PONDER_NAMESPACE_END
