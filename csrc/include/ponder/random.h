// Counter-based random numbers shared by the CPU and CUDA kernels: Philox4x32-10 (Salmon et al.,
// "Parallel random numbers: as easy as 1, 2, 3", SC'11) and Box-Muller normals. Element i of a
// stream draws from counter block i / 4, lane i % 4, so any thread can generate any element
// without state, and results never depend on the thread count or the launch shape.
#pragma once

#include <cmath>
#include <cstring>

#include "ponder/common.h"

namespace ponder {
namespace random {

PONDER_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// Philox4x32 with 10 rounds. counter = (block_lo, block_hi, stream, 0), key = the 64-bit seed.
PONDER_HD void philox4x32_10(uint64_t block, uint32_t stream, uint64_t seed, uint32_t out[4]) {
  uint32_t c0 = static_cast<uint32_t>(block), c1 = static_cast<uint32_t>(block >> 32);
  uint32_t c2 = stream, c3 = 0u;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(0xD2511F53u, c0, hi0, lo0);
    mulhilo32(0xCD9E8D57u, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

// Uniform in (0, 1): never exactly 0 (Box-Muller takes its log) and, in double, never 1.
PONDER_HD float uniform_open_f32(uint32_t r) {
  return static_cast<float>(r >> 8) * 5.9604644775390625e-08f + 2.98023223876953125e-08f;
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

// Natural log for x in (0, 1], branch-free so that loops over it vectorise: x = m * 2^e with
// m in [sqrt(1/2), sqrt(2)), log m = 2 atanh((m - 1) / (m + 1)) by its odd series
// (|t| <= 0.1716, truncation error < 1e-9, below float rounding).
PONDER_HD float log_unit_f32(float x) {
  const uint32_t bits = float_bits(x);
  int e = static_cast<int>((bits >> 23) & 0xFFu) - 127;
  float m = bits_float((bits & 0x007FFFFFu) | 0x3F800000u);  // in [1, 2)
  const bool big = m > 1.41421356f;
  m = big ? 0.5f * m : m;
  e = big ? e + 1 : e;
  const float t = (m - 1.0f) / (m + 1.0f);
  const float t2 = t * t;
  const float series =
      1.0f + t2 * (1.0f / 3 + t2 * (1.0f / 5 + t2 * (1.0f / 7 + t2 * (1.0f / 9))));
  return static_cast<float>(e) * 0.69314718055994531f + 2.0f * t * series;
}

// sin and cos of 2 pi u for u in [0, 1), branch-free: quadrant from 4u, then Taylor polynomials
// on [-pi/4, pi/4] (error < 4e-9).
PONDER_HD void sincos_turns_f32(float u, float& s, float& c) {
  const float q = floorf(4.0f * u + 0.5f);  // nearest quarter turn, 0..4
  const float a = (4.0f * u - q) * 1.57079632679489662f;  // in [-pi/4, pi/4]
  const float a2 = a * a;
  const float sa = a * (1.0f + a2 * (-1.0f / 6 + a2 * (1.0f / 120 + a2 * (-1.0f / 5040 +
                                                          a2 * (1.0f / 362880)))));
  const float ca = 1.0f + a2 * (-0.5f + a2 * (1.0f / 24 + a2 * (-1.0f / 720 +
                                                          a2 * (1.0f / 40320))));
  const int quadrant = static_cast<int>(q) & 3;
  // Rotate (cos a, sin a) by quadrant * 90 degrees.
  const float cq = quadrant == 0 ? ca : quadrant == 1 ? -sa : quadrant == 2 ? -ca : sa;
  const float sq = quadrant == 0 ? sa : quadrant == 1 ? ca : quadrant == 2 ? -sa : -ca;
  s = sq;
  c = cq;
}

// Four standard normals from one Philox block (two Box-Muller pairs).
PONDER_HD void normal4(uint64_t block, uint32_t stream, uint64_t seed, float out[4]) {
  uint32_t r[4];
  philox4x32_10(block, stream, seed, r);
  for (int pair = 0; pair < 2; ++pair) {
    const float radius = sqrtf(-2.0f * log_unit_f32(uniform_open_f32(r[2 * pair])));
    float s, c;
    sincos_turns_f32(uniform_open_f32(r[2 * pair + 1]), s, c);
    out[2 * pair] = radius * c;
    out[2 * pair + 1] = radius * s;
  }
}

PONDER_HD void normal4(uint64_t block, uint32_t stream, uint64_t seed, double out[4]) {
  uint32_t r[4];
  philox4x32_10(block, stream, seed, r);
  for (int pair = 0; pair < 2; ++pair) {
    const double radius = sqrt(-2.0 * log(uniform_open_f64(r[2 * pair])));
    const double angle = 6.283185307179586 * uniform_open_f64(r[2 * pair + 1]);
    out[2 * pair] = radius * cos(angle);
    out[2 * pair + 1] = radius * sin(angle);
  }
}

// Normal number `index` of a stream, one at a time (used by the CUDA kernels).
template <class Acc>
PONDER_HD Acc normal_at(uint64_t index, uint32_t stream, uint64_t seed) {
  Acc four[4];
  normal4(index >> 2, stream, seed, four);
  return four[index & 3];
}

// One uniform in (0, 1) per index, as double (for Metropolis-Hastings tests).
PONDER_HD double uniform_at(uint64_t index, uint32_t stream, uint64_t seed) {
  uint32_t r[4];
  philox4x32_10(index, stream, seed, r);
  return uniform_open_f64(r[0]);
}

}  // namespace random
}  // namespace ponder
