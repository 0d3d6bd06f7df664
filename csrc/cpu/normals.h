// Standard normals of a Philox stream (ponder/random.h: normal4_f32) for many consecutive blocks
// at once, kept in vector registers from the counter to the stored normal. Included by kernel
// files only: everything here lives in the namespace of one instruction-set copy (cpu/kernel.h).
//
// Why not the compiler's loop over box_muller4_f32: element i of a stream is lane i % 4 of block
// i / 4, so the four normals of a block are stored interleaved (xi[4b + j]). GCC vectorised the
// arithmetic across blocks but wrote those stride-4 outputs one float at a time (vextractps /
// vmovss: a fifth of the loop's instructions), and the words went through memory between
// philox_words and that loop. Here the words stay in registers, Box-Muller runs on whole
// vectors, and the four result vectors are interleaved with in-lane unpacks and 128-bit lane
// shuffles (a 4 x kWide transpose) into full-width stores.
//
// The arithmetic is box_muller4_f32's, operation for operation (uniform_open_f32, log_f32,
// sqrtf, sincos_turns_f32), so the normals equal the scalar path's up to FMA contraction, which
// the compiler may apply differently to the two (tests/test_cpu_isa.py compares them).
#pragma once

#include <cstdint>

#include "cpu/philox.h"
#include "ponder/random.h"

namespace ponder::cpu::PONDER_CPU_ISA {
namespace {

#if defined(__AVX2__)
// Native-width vectors (one zmm or one ymm) through GCC's vector extensions: lane-wise + - * /,
// comparisons, shifts and conversions written once for both instruction sets.
typedef float VecF __attribute__((vector_size(4 * kWide)));
typedef int32_t VecI __attribute__((vector_size(4 * kWide)));
typedef uint32_t VecU __attribute__((vector_size(4 * kWide)));

inline VecU as_u(VecU32 a) { return reinterpret_cast<VecU>(a.v); }

#if defined(__AVX512F__)
// (The maskz form with every lane selected: the plain one passes _mm512_undefined_ps() through,
// which GCC 12 reports as maybe-uninitialized.)
inline VecF vsqrt(VecF x) {
  return reinterpret_cast<VecF>(
      _mm512_maskz_sqrt_ps(static_cast<__mmask16>(0xFFFF), reinterpret_cast<__m512>(x)));
}
// out[0, 64) = n0[0], n1[0], n2[0], n3[0], n0[1], ...: a 4 x 16 transpose.
inline void store_interleaved(float* out, VecF n0, VecF n1, VecF n2, VecF n3) {
  const __mmask16 k16 = 0xFFFF;
  const __mmask8 k8 = 0xFF;
  const __m512 a = reinterpret_cast<__m512>(n0), b = reinterpret_cast<__m512>(n1);
  const __m512 c = reinterpret_cast<__m512>(n2), d = reinterpret_cast<__m512>(n3);
  // Within each 128-bit lane: block g's four normals side by side (u0: blocks 0, 4, 8, 12; u1:
  // 1, 5, 9, 13; ...).
  const __m512d t0 = _mm512_castps_pd(_mm512_maskz_unpacklo_ps(k16, a, b));
  const __m512d t1 = _mm512_castps_pd(_mm512_maskz_unpackhi_ps(k16, a, b));
  const __m512d t2 = _mm512_castps_pd(_mm512_maskz_unpacklo_ps(k16, c, d));
  const __m512d t3 = _mm512_castps_pd(_mm512_maskz_unpackhi_ps(k16, c, d));
  const __m512 u0 = _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(k8, t0, t2));
  const __m512 u1 = _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(k8, t0, t2));
  const __m512 u2 = _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(k8, t1, t3));
  const __m512 u3 = _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(k8, t1, t3));
  // Then transpose the 4 x 4 matrix of 128-bit lanes.
  const __m512 v0 = _mm512_maskz_shuffle_f32x4(k16, u0, u1, 0x44);
  const __m512 v1 = _mm512_maskz_shuffle_f32x4(k16, u0, u1, 0xEE);
  const __m512 v2 = _mm512_maskz_shuffle_f32x4(k16, u2, u3, 0x44);
  const __m512 v3 = _mm512_maskz_shuffle_f32x4(k16, u2, u3, 0xEE);
  _mm512_storeu_ps(out, _mm512_maskz_shuffle_f32x4(k16, v0, v2, 0x88));
  _mm512_storeu_ps(out + 16, _mm512_maskz_shuffle_f32x4(k16, v0, v2, 0xDD));
  _mm512_storeu_ps(out + 32, _mm512_maskz_shuffle_f32x4(k16, v1, v3, 0x88));
  _mm512_storeu_ps(out + 48, _mm512_maskz_shuffle_f32x4(k16, v1, v3, 0xDD));
}
#else
inline VecF vsqrt(VecF x) {
  return reinterpret_cast<VecF>(_mm256_sqrt_ps(reinterpret_cast<__m256>(x)));
}
// out[0, 32) = n0[0], n1[0], n2[0], n3[0], n0[1], ...: a 4 x 8 transpose.
inline void store_interleaved(float* out, VecF n0, VecF n1, VecF n2, VecF n3) {
  const __m256 a = reinterpret_cast<__m256>(n0), b = reinterpret_cast<__m256>(n1);
  const __m256 c = reinterpret_cast<__m256>(n2), d = reinterpret_cast<__m256>(n3);
  const __m256d t0 = _mm256_castps_pd(_mm256_unpacklo_ps(a, b));
  const __m256d t1 = _mm256_castps_pd(_mm256_unpackhi_ps(a, b));
  const __m256d t2 = _mm256_castps_pd(_mm256_unpacklo_ps(c, d));
  const __m256d t3 = _mm256_castps_pd(_mm256_unpackhi_ps(c, d));
  const __m256 u0 = _mm256_castpd_ps(_mm256_unpacklo_pd(t0, t2));  // blocks 0 | 4
  const __m256 u1 = _mm256_castpd_ps(_mm256_unpackhi_pd(t0, t2));  // blocks 1 | 5
  const __m256 u2 = _mm256_castpd_ps(_mm256_unpacklo_pd(t1, t3));  // blocks 2 | 6
  const __m256 u3 = _mm256_castpd_ps(_mm256_unpackhi_pd(t1, t3));  // blocks 3 | 7
  _mm256_storeu_ps(out, _mm256_permute2f128_ps(u0, u1, 0x20));
  _mm256_storeu_ps(out + 8, _mm256_permute2f128_ps(u2, u3, 0x20));
  _mm256_storeu_ps(out + 16, _mm256_permute2f128_ps(u0, u1, 0x31));
  _mm256_storeu_ps(out + 24, _mm256_permute2f128_ps(u2, u3, 0x31));
}
#endif

// The round keys of one seed, broadcast once per call rather than once per round and vector
// (20 vpbroadcastd from general registers per vector of blocks otherwise).
struct PhiloxKeys {
  VecU32 k0[10], k1[10];
  explicit PhiloxKeys(uint64_t seed) {
    uint32_t a = static_cast<uint32_t>(seed), b = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      k0[round] = vbroadcast(a);
      k1[round] = vbroadcast(b);
      a += 0x9E3779B9u;
      b += 0xBB67AE85u;
    }
  }
};

// Philox4x32-10 words of the kWide blocks first .. first + kWide - 1 (the counter's low word must
// not wrap inside them), one block per 32-bit lane of w0..w3: the same words as philox_words.
// Unlike philox_words' dense layout, the rounds run with one block per 64-bit lane (two vectors
// of kWide / 2 blocks): vpmuludq then gives a block's whole 64-bit product in place, its low
// word is already where the next round reads it and the high word is one shift away, with no
// odd-lane multiply and no blends. The high halves of the 64-bit lanes carry garbage that
// vpmuludq never reads; one shuffle per word packs the low halves at the end.
#if defined(__AVX512F__)
inline void philox_wide(uint64_t first, uint32_t stream, const PhiloxKeys& keys, VecU32& w0,
                        VecU32& w1, VecU32& w2, VecU32& w3) {
  const uint32_t lo32 = static_cast<uint32_t>(first);
  const __m512i base = _mm512_set1_epi64(lo32);
  __m512i a0 = _mm512_add_epi64(base, _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7));
  __m512i b0 = _mm512_add_epi64(base, _mm512_setr_epi64(8, 9, 10, 11, 12, 13, 14, 15));
  __m512i a1 = _mm512_set1_epi32(static_cast<int>(first >> 32)), b1 = a1;
  __m512i a2 = _mm512_set1_epi32(static_cast<int>(stream)), b2 = a2;
  __m512i a3 = _mm512_setzero_si512(), b3 = a3;
  const __m512i m0 = _mm512_set1_epi64(0xD2511F53u), m1 = _mm512_set1_epi64(0xCD9E8D57u);
  const __mmask8 k8 = 0xFF;  // the maskz forms: see vsqrt
  for (int round = 0; round < 10; ++round) {
    const __m512i key0 = keys.k0[round].v, key1 = keys.k1[round].v;
    const __m512i pa0 = _mm512_maskz_mul_epu32(k8, a0, m0);
    const __m512i pa1 = _mm512_maskz_mul_epu32(k8, a2, m1);
    const __m512i pb0 = _mm512_maskz_mul_epu32(k8, b0, m0);
    const __m512i pb1 = _mm512_maskz_mul_epu32(k8, b2, m1);
    // c0 = hi1 ^ c1 ^ k0, c2 = hi0 ^ c3 ^ k1 (0x96: three-way xor), c1 = lo1, c3 = lo0.
    a0 = _mm512_ternarylogic_epi32(_mm512_maskz_srli_epi64(k8, pa1, 32), a1, key0, 0x96);
    a2 = _mm512_ternarylogic_epi32(_mm512_maskz_srli_epi64(k8, pa0, 32), a3, key1, 0x96);
    b0 = _mm512_ternarylogic_epi32(_mm512_maskz_srli_epi64(k8, pb1, 32), b1, key0, 0x96);
    b2 = _mm512_ternarylogic_epi32(_mm512_maskz_srli_epi64(k8, pb0, 32), b3, key1, 0x96);
    a1 = pa1; a3 = pa0; b1 = pb1; b3 = pb0;
  }
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28,
                                         30);
  w0 = {_mm512_permutex2var_epi32(a0, even, b0)};
  w1 = {_mm512_permutex2var_epi32(a1, even, b1)};
  w2 = {_mm512_permutex2var_epi32(a2, even, b2)};
  w3 = {_mm512_permutex2var_epi32(a3, even, b3)};
}
#else
inline void philox_wide(uint64_t first, uint32_t stream, const PhiloxKeys& keys, VecU32& w0,
                        VecU32& w1, VecU32& w2, VecU32& w3) {
  const uint32_t lo32 = static_cast<uint32_t>(first);
  const __m256i base = _mm256_set1_epi64x(lo32);
  // Blocks 0, 1, 4, 5 in a and 2, 3, 6, 7 in b: then one in-lane shuffle packs them in order.
  __m256i a0 = _mm256_add_epi64(base, _mm256_setr_epi64x(0, 1, 4, 5));
  __m256i b0 = _mm256_add_epi64(base, _mm256_setr_epi64x(2, 3, 6, 7));
  __m256i a1 = _mm256_set1_epi32(static_cast<int>(first >> 32)), b1 = a1;
  __m256i a2 = _mm256_set1_epi32(static_cast<int>(stream)), b2 = a2;
  __m256i a3 = _mm256_setzero_si256(), b3 = a3;
  const __m256i m0 = _mm256_set1_epi64x(0xD2511F53u), m1 = _mm256_set1_epi64x(0xCD9E8D57u);
  for (int round = 0; round < 10; ++round) {
    const __m256i key0 = keys.k0[round].v, key1 = keys.k1[round].v;
    const __m256i pa0 = _mm256_mul_epu32(a0, m0), pa1 = _mm256_mul_epu32(a2, m1);
    const __m256i pb0 = _mm256_mul_epu32(b0, m0), pb1 = _mm256_mul_epu32(b2, m1);
    a0 = _mm256_xor_si256(_mm256_srli_epi64(pa1, 32), _mm256_xor_si256(a1, key0));
    a2 = _mm256_xor_si256(_mm256_srli_epi64(pa0, 32), _mm256_xor_si256(a3, key1));
    b0 = _mm256_xor_si256(_mm256_srli_epi64(pb1, 32), _mm256_xor_si256(b1, key0));
    b2 = _mm256_xor_si256(_mm256_srli_epi64(pb0, 32), _mm256_xor_si256(b3, key1));
    a1 = pa1; a3 = pa0; b1 = pb1; b3 = pb0;
  }
  const auto pack = [](__m256i a, __m256i b) {
    return VecU32{_mm256_castps_si256(_mm256_shuffle_ps(_mm256_castsi256_ps(a),
                                                        _mm256_castsi256_ps(b), 0x88))};
  };
  w0 = pack(a0, b0);
  w1 = pack(a1, b1);
  w2 = pack(a2, b2);
  w3 = pack(a3, b3);
}
#endif

// uniform_open_f32, lane-wise.
inline VecF vuniform(VecU r) {
  const VecI k = reinterpret_cast<VecI>(r >> 8);
  return __builtin_convertvector(k, VecF) * 5.9604644775390625e-08f + 2.98023223876953125e-08f;
}

// log_f32, lane-wise (the same steps; see there for the reduction and the series' error).
inline VecF vlog(VecF x) {
  constexpr uint32_t kSqrtHalf = 0x3F3504F3u;
  const VecU shifted = reinterpret_cast<VecU>(x) + (0x3F800000u - kSqrtHalf);
  const VecI e = reinterpret_cast<VecI>(shifted >> 23) - 127;
  const VecF m = reinterpret_cast<VecF>((shifted & 0x007FFFFFu) + kSqrtHalf);
  const VecF t = (m - 1.0f) / (m + 1.0f);
  const VecF t2 = t * t;
  const VecF series =
      1.0f + t2 * (1.0f / 3 + t2 * (1.0f / 5 + t2 * (1.0f / 7 + t2 * (1.0f / 9))));
  return __builtin_convertvector(e, VecF) * 0.69314718055994531f + 2.0f * t * series;
}

// sincos_turns_f32, lane-wise.
inline void vsincos_turns(VecF u, VecF& s, VecF& c) {
  const VecI qi = __builtin_convertvector(4.0f * u + 0.5f, VecI);  // truncation = floor here
  const VecF a = (4.0f * u - __builtin_convertvector(qi, VecF)) * 1.57079632679489662f;
  const VecF a2 = a * a;
  const VecF sa = a * (1.0f + a2 * (-1.0f / 6 + a2 * (1.0f / 120 + a2 * (-1.0f / 5040 +
                                                          a2 * (1.0f / 362880)))));
  const VecF ca = 1.0f + a2 * (-0.5f + a2 * (1.0f / 24 + a2 * (-1.0f / 720 +
                                                          a2 * (1.0f / 40320))));
  const VecU quadrant = reinterpret_cast<VecU>(qi) & 3u;
  const VecI odd = reinterpret_cast<VecI>(quadrant & 1u) != 0;  // all-ones lanes where odd
  const VecU su = reinterpret_cast<VecU>(sa), cu = reinterpret_cast<VecU>(ca);
  const VecU oddu = reinterpret_cast<VecU>(odd);
  const VecU c0 = (su & oddu) | (cu & ~oddu);
  const VecU s0 = (cu & oddu) | (su & ~oddu);
  c = reinterpret_cast<VecF>(c0 ^ (((quadrant + 1u) & 2u) << 30));
  s = reinterpret_cast<VecF>(s0 ^ ((quadrant & 2u) << 30));
}
#endif  // __AVX2__

// The rows a kernel reads (p) and writes (w) after drawing a chunk's normals, to be prefetched
// while the normals are computed: up to three input ranges and one output range of `bytes`
// bytes each (nullptr: none).
struct Prefetch {
  const void* p[3] = {nullptr, nullptr, nullptr};
  void* w = nullptr;
  int64_t bytes = 0;
};

// xi[0, 4 * blocks) = the normals of Philox blocks first, first + 1, ... of (stream, seed):
// xi[4 b + j] = normal4_f32(first + b, stream, seed).n_j (up to FMA contraction).
//
// Meanwhile the cache lines of `ahead` are prefetched, a few per vector of blocks. The
// generator is arithmetic and the step after it is memory: without this a thread computes
// normals with the memory bus idle, then waits on its inputs with the arithmetic units idle, and
// the two times add. With it the inputs arrive while the normals are computed.
inline void normals_f32(float* xi, int64_t blocks, uint64_t first, uint32_t stream,
                        uint64_t seed, const Prefetch& ahead = {}) {
  constexpr int64_t kLine = 64;
  const int64_t lines = (ahead.bytes + kLine - 1) / kLine;
  int64_t next_line = 0;  // of each range
  int64_t b = 0;
#if defined(__AVX2__)
  // Lines per vector of blocks: all of them issued by the middle of the chunk.
  const int64_t vectors = blocks / kWide;
  const int64_t per_vector = vectors > 0 ? 2 * lines / vectors + 1 : lines;
  const PhiloxKeys keys(seed);
  for (; b + kWide <= blocks; b += kWide) {
    for (int64_t l = 0; l < per_vector && next_line < lines; ++l, ++next_line) {
      for (const void* p : ahead.p) {
        if (p != nullptr) {
          __builtin_prefetch(static_cast<const char*>(p) + next_line * kLine, 0, 3);
        }
      }
      if (ahead.w != nullptr) {
        __builtin_prefetch(static_cast<char*>(ahead.w) + next_line * kLine, 1, 3);
      }
    }
    const uint64_t block = first + static_cast<uint64_t>(b);
    if (static_cast<uint32_t>(block) > UINT32_MAX - (kWide - 1)) break;  // low word wraps: scalar
    VecU32 c0, c1, c2, c3;
    philox_wide(block, stream, keys, c0, c1, c2, c3);
    // box_muller4_f32 on the vectors of words.
    const VecF radius0 = vsqrt(-2.0f * vlog(vuniform(as_u(c0))));
    const VecF radius1 = vsqrt(-2.0f * vlog(vuniform(as_u(c2))));
    VecF s0, co0, s1, co1;
    vsincos_turns(vuniform(as_u(c1)), s0, co0);
    vsincos_turns(vuniform(as_u(c3)), s1, co1);
    store_interleaved(xi + 4 * b, radius0 * co0, radius0 * s0, radius1 * co1, radius1 * s1);
  }
#endif
  (void)next_line;
  (void)lines;
  for (; b < blocks; ++b) {
    const random::Normal4<float> four = random::normal4_f32(first + b, stream, seed);
    xi[4 * b] = four.n0;
    xi[4 * b + 1] = four.n1;
    xi[4 * b + 2] = four.n2;
    xi[4 * b + 3] = four.n3;
  }
}

}  // namespace
}  // namespace ponder::cpu::PONDER_CPU_ISA
