// Philox4x32-10 (ponder/random.h) for many consecutive blocks at once, written with the vector
// multiplies of the instruction set being compiled. Included by kernel files only: everything
// here lives in the namespace of one instruction-set copy (cpu/kernel.h: PONDER_CPU_ISA), so the
// AVX-512 and AVX2 definitions never meet at link time.
#pragma once

#include <climits>
#include <cstdint>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "cpu/kernel.h"
#include "ponder/random.h"

namespace ponder::cpu::PONDER_CPU_ISA {
namespace {

// Philox4x32-10 for kWide consecutive blocks at once, one block per 32-bit lane, written with
// the multiplies the instruction set has: vpmuludq multiplies the even 32-bit lanes into 64-bit
// products, so each 32x32 -> 64-bit multiply is two of them (even lanes, then the odd lanes
// shifted down) and the high and low words are put back in place with a shift and a blend.
// Left to the compiler, the scalar philox4x32_10 in an `omp simd` loop widened every lane to
// 64 bits and packed the products back with cross-lane permutes (vperm2i128, vpshufd: more
// than half of the generator's instructions on AVX2, bench/cpu_bounds.md). The words are the
// same as philox4x32_10's, bit for bit: the stream does not change.
#if defined(__AVX512F__)
constexpr int kWide = 16;
struct VecU32 {
  __m512i v;
};
inline VecU32 vbroadcast(uint32_t x) { return {_mm512_set1_epi32(static_cast<int>(x))}; }
inline VecU32 vxor(VecU32 a, VecU32 b) { return {_mm512_xor_si512(a.v, b.v)}; }
// (The maskz forms with every lane selected: the plain ones pass _mm512_undefined_epi32() through,
// which GCC 12 reports as maybe-uninitialized.)
inline void vmulhilo(VecU32 m, VecU32 c, VecU32& hi, VecU32& lo) {
  const __mmask8 all = 0xFF;
  const __m512i even = _mm512_maskz_mul_epu32(all, c.v, m.v);
  const __m512i odd = _mm512_maskz_mul_epu32(all, _mm512_maskz_srli_epi64(all, c.v, 32), m.v);
  hi = {_mm512_mask_blend_epi32(0xAAAA, _mm512_maskz_srli_epi64(all, even, 32), odd)};
  lo = {_mm512_mask_blend_epi32(0xAAAA, even, _mm512_maskz_slli_epi64(all, odd, 32))};
}
inline VecU32 vlanes_plus(uint32_t base) {
  return {_mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(base)),
                           _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
                                             15))};
}
inline void vstore_u32(uint32_t* p, VecU32 a) { _mm512_storeu_si512(p, a.v); }
#elif defined(__AVX2__)
constexpr int kWide = 8;
struct VecU32 {
  __m256i v;
};
inline VecU32 vbroadcast(uint32_t x) { return {_mm256_set1_epi32(static_cast<int>(x))}; }
inline VecU32 vxor(VecU32 a, VecU32 b) { return {_mm256_xor_si256(a.v, b.v)}; }
inline void vmulhilo(VecU32 m, VecU32 c, VecU32& hi, VecU32& lo) {
  const __m256i even = _mm256_mul_epu32(c.v, m.v);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(c.v, 32), m.v);
  hi = {_mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA)};
  lo = {_mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA)};
}
inline VecU32 vlanes_plus(uint32_t base) {
  return {_mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(base)),
                           _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))};
}
inline void vstore_u32(uint32_t* p, VecU32 a) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), a.v); }
#else
constexpr int kWide = 0;  // the baseline build keeps the compiler's loop
#endif

// w0..w3[b] = the words of Philox block first + b, for b < blocks.
inline void philox_words(uint32_t* w0, uint32_t* w1, uint32_t* w2, uint32_t* w3, int64_t blocks,
                         uint64_t first, uint32_t stream, uint64_t seed) {
  int64_t b = 0;
#if defined(__AVX2__)
  for (; b + kWide <= blocks; b += kWide) {
    const uint64_t block = first + static_cast<uint64_t>(b);
    const uint32_t lo32 = static_cast<uint32_t>(block);
    // The lanes' counters are lo32 + lane with the same high word, unless the low word wraps
    // inside this vector (once every 2^32 blocks): then the scalar loop below does it.
    if (lo32 > UINT32_MAX - (kWide - 1)) break;
    VecU32 c0 = vlanes_plus(lo32), c1 = vbroadcast(static_cast<uint32_t>(block >> 32));
    VecU32 c2 = vbroadcast(stream), c3 = vbroadcast(0u);
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    const VecU32 m0 = vbroadcast(0xD2511F53u), m1 = vbroadcast(0xCD9E8D57u);
    for (int round = 0; round < 10; ++round) {
      VecU32 hi0, lo0, hi1, lo1;
      vmulhilo(m0, c0, hi0, lo0);
      vmulhilo(m1, c2, hi1, lo1);
      c0 = vxor(vxor(hi1, c1), vbroadcast(k0));
      c2 = vxor(vxor(hi0, c3), vbroadcast(k1));
      c1 = lo1;
      c3 = lo0;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    vstore_u32(w0 + b, c0);
    vstore_u32(w1 + b, c1);
    vstore_u32(w2 + b, c2);
    vstore_u32(w3 + b, c3);
  }
#endif
  for (; b < blocks; ++b) {
    const random::U32x4 r = random::philox4x32_10(first + b, stream, seed);
    w0[b] = r.v0;
    w1[b] = r.v1;
    w2[b] = r.v2;
    w3[b] = r.v3;
  }
}

}  // namespace
}  // namespace ponder::cpu::PONDER_CPU_ISA
