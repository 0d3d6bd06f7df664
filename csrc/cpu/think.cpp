// CPU launchers for ponder.ops.think: validate -> dispatch dtype -> OpenMP over
// (batch x KV head x chunk of keys) -> merge the chunks' online-softmax partials.
//
// pruned_decode_attention reads every visible key and value row exactly once: the G query heads
// of a KV head (times the S queries) share each row while it is in L1, so K/V are never expanded
// for GQA. Keys are split into fixed chunks of kChunkKeys (a split that does not depend on the
// thread count, so neither do the results), each chunk runs a blocked online softmax in base 2,
// and the partials (max, sum, unnormalised output) are merged per query row at the end.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/kernel.h"
#include "ponder/think.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace ponder::cpu::PONDER_CPU_ISA {
namespace {

// Keys per task: large enough that a task's fixed costs (gathering q, its partial's write and
// merge) are small, small enough that B * Hkv * L / kChunkKeys tasks keep every thread busy.
constexpr int64_t kChunkKeys = 512;
// At most this many floats of partial outputs (16 M = 64 MB) per call.
constexpr int64_t kPartialBudget = int64_t(16) << 20;
// Keys per online-softmax step: the scores of one block for all query rows stay in L1.
constexpr int64_t kBlock = 32;
// Below this many key rows (over all heads) one thread does it all: forking costs more.
constexpr int64_t kParallelMinRows = 2048;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// A row of n values as float: the row itself for float storage, else converted into `buf`.
template <class T>
inline const float* as_float(const T* src, int64_t n, float* buf) {
  if constexpr (std::is_same_v<T, float>) {
    (void)n;
    (void)buf;
    return src;
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) buf[i] = load(src[i]);
    return buf;
  }
}

// 16 floats: one AVX-512 register, two AVX2 ones, four SSE ones, held as that many native
// registers. (A single 64-byte GCC vector is what the arithmetic means, but on AVX2 GCC kept
// such vectors in memory and moved them through general registers between every two FMAs: the
// AVX2 build ran 2.7x slower than the AVX-512 one, far from the memory bound; bench/think.md.)
// Every operation is lane-wise, so the results are the same bits as one 16-lane vector's.
#if defined(__AVX512F__)
using vnat = float __attribute__((vector_size(64)));
#elif defined(__AVX__)
using vnat = float __attribute__((vector_size(32)));
#else
using vnat = float __attribute__((vector_size(16)));
#endif
constexpr int64_t kLanes = 16;
constexpr int kNat = int(sizeof(vnat) / sizeof(float));  // floats per native register
constexpr int kParts = int(kLanes) / kNat;

struct vfloat {
  vnat p[kParts];
};

inline vfloat operator*(vfloat a, vfloat b) {
  vfloat r;
  for (int i = 0; i < kParts; ++i) r.p[i] = a.p[i] * b.p[i];
  return r;
}
inline vfloat operator*(float a, vfloat b) {
  vfloat r;
  for (int i = 0; i < kParts; ++i) r.p[i] = a * b.p[i];
  return r;
}
inline vfloat& operator+=(vfloat& a, vfloat b) {
  for (int i = 0; i < kParts; ++i) a.p[i] += b.p[i];
  return a;
}
inline vfloat& operator*=(vfloat& a, float b) {
  for (int i = 0; i < kParts; ++i) a.p[i] *= b;
  return a;
}
inline vfloat vzero() {
  vfloat r;
  for (int i = 0; i < kParts; ++i) r.p[i] = vnat{};
  return r;
}

inline int64_t padded(int64_t n) { return (n + kLanes - 1) / kLanes * kLanes; }

inline vfloat vload(const float* p) {
  vfloat v;
  for (int i = 0; i < kParts; ++i) std::memcpy(&v.p[i], p + i * kNat, sizeof(vnat));
  return v;
}

inline void vstore(float* p, vfloat v) {
  for (int i = 0; i < kParts; ++i) std::memcpy(p + i * kNat, &v.p[i], sizeof(vnat));
}

// 16 bfloat16 values widened to float in registers (the bits shifted into the high half), so a
// bf16 cache is read at 2 bytes per value with no staging copy.
inline vfloat vload(const BFloat16* p) {
#if defined(__AVX512F__)
  // One vpmovzxwd ymm -> zmm and a shift. (The generic code below made GCC widen the two
  // 8-value halves separately and insert them back: 5 shuffles per 16 values, in the value
  // loop's critical path; seen in the disassembly of the AVX-512 build.) The maskz forms with
  // every lane selected avoid GCC 12's maybe-uninitialized report on _mm512_undefined_epi32.
  const __m512i w = _mm512_maskz_slli_epi32(
      0xFFFF, _mm512_maskz_cvtepu16_epi32(0xFFFF, _mm256_loadu_si256(
                                                      reinterpret_cast<const __m256i*>(p))),
      16);
  vfloat f;
  std::memcpy(&f.p[0], &w, sizeof w);
  return f;
#else
  using vu16 = uint16_t __attribute__((vector_size(sizeof(vnat) / 2)));
  using vu32 = uint32_t __attribute__((vector_size(sizeof(vnat))));
  vfloat f;
  for (int i = 0; i < kParts; ++i) {
    vu16 h;
    std::memcpy(&h, p + i * kNat, sizeof(h));
    const vu32 w = __builtin_convertvector(h, vu32) << 16;
    std::memcpy(&f.p[i], &w, sizeof(vnat));
  }
  return f;
#endif
}

// The first n < 16 values, zeros after: a row's tail, never read past its end.
template <class E>
inline vfloat vload_part(const E* p, int64_t n) {
  E buf[kLanes] = {};
  std::memcpy(buf, p, sizeof(E) * n);
  return vload(buf);
}

// The storage kernels read directly: float and bfloat16 (vload above); float16 rows are first
// converted into a float buffer (an exact but scalar conversion).
template <class T>
using direct_t = std::conditional_t<std::is_same_v<T, Half>, float, T>;

template <class T>
inline const direct_t<T>* direct_row(const T* src, int64_t n, float* buf) {
  if constexpr (std::is_same_v<T, Half>) {
    return as_float(src, n, buf);
  } else {
    (void)n;
    (void)buf;
    return src;
  }
}

using v8 = float __attribute__((vector_size(32)));

// r = lanes 0-7 plus lanes 8-15: the first step of every horizontal sum below. (An out
// parameter: a 32-byte vector returned by value has no fixed ABI in the baseline build.)
inline void halves(const vfloat& v, v8& r) {
#if defined(__AVX512F__)
  v8 lo, hi;
  std::memcpy(&lo, &v.p[0], 32);
  std::memcpy(&hi, reinterpret_cast<const char*>(&v.p[0]) + 32, 32);
  r = lo + hi;
#elif defined(__AVX__)
  r = v.p[0] + v.p[1];
#else
  const vnat a = v.p[0] + v.p[2], b = v.p[1] + v.p[3];
  std::memcpy(&r, &a, 16);
  std::memcpy(reinterpret_cast<char*>(&r) + 16, &b, 16);
#endif
}

inline float hsum(vfloat v) {
  using v4 = float __attribute__((vector_size(16)));
  v8 s8;
  halves(v, s8);
  v4 a, b;
  std::memcpy(&a, &s8, 16);
  std::memcpy(&b, reinterpret_cast<const char*>(&s8) + 16, 16);
  const v4 s4 = a + b;
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

// The four horizontal sums of a, b, c, d together: three rounds of shuffles and adds shared by
// the four vectors instead of four separate reductions.
inline void hsum4(vfloat a, vfloat b, vfloat c, vfloat d, float* out, int64_t ostride) {
  using i8 = int32_t __attribute__((vector_size(32)));
  v8 a8, b8, c8, d8;
  halves(a, a8);
  halves(b, b8);
  halves(c, c8);
  halves(d, d8);
  const i8 lo4 = {0, 1, 2, 3, 8, 9, 10, 11}, hi4 = {4, 5, 6, 7, 12, 13, 14, 15};
  const v8 ab = __builtin_shuffle(a8, b8, lo4) + __builtin_shuffle(a8, b8, hi4);  // a:0-3 b:4-7
  const v8 cd = __builtin_shuffle(c8, d8, lo4) + __builtin_shuffle(c8, d8, hi4);  // c:0-3 d:4-7
  const i8 lo2 = {0, 1, 8, 9, 4, 5, 12, 13}, hi2 = {2, 3, 10, 11, 6, 7, 14, 15};
  const v8 x = __builtin_shuffle(ab, cd, lo2) + __builtin_shuffle(ab, cd, hi2);  // a c b d pairs
  const i8 swap = {1, 0, 3, 2, 5, 4, 7, 6};
  const v8 y = x + __builtin_shuffle(x, swap);
  out[0] = y[0];
  out[ostride] = y[4];
  out[2 * ostride] = y[2];
  out[3 * ostride] = y[6];
}

// out[r * ostride] = dot(q[r, :n], key[:n]) for r < R. q rows are zero-padded to padded(n)
// floats. The key is read only in [0, n), so the last row of a tensor never reads past its end:
// a partial last vector is loaded as the 16 values ending at n (overlapping the previous vector)
// and dotted with `qtail` ([R, 16]: each row's last n % 16 values, right-aligned, zeros before),
// which avoids a staging copy whose wide reload would stall on store forwarding. Rows shorter
// than 16 use a staged copy. Four query rows share each load of the key (the GQA group).
template <class E>
inline void dot_rows(const float* q, const float* qtail, int64_t R, const E* key, int64_t n,
                     float* out, int64_t ostride) {
  const int64_t np = padded(n), full = n / kLanes, rem = n - full * kLanes;
  const bool overlap = rem > 0 && n >= kLanes;
  const vfloat tail = overlap ? vload(key + n - kLanes) : vload_part(key + full * kLanes, rem);
  // Where each row's tail query vector lives, and the stride between rows.
  const float* qt = overlap ? qtail : q + full * kLanes;
  const int64_t qt_stride = overlap ? kLanes : np;
  int64_t r = 0;
  for (; r + 4 <= R; r += 4) {
    const float* q0 = q + r * np;
    vfloat a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();
    for (int64_t c = 0; c < full; ++c) {
      const vfloat kv = vload(key + c * kLanes);
      a0 += vload(q0 + c * kLanes) * kv;
      a1 += vload(q0 + np + c * kLanes) * kv;
      a2 += vload(q0 + 2 * np + c * kLanes) * kv;
      a3 += vload(q0 + 3 * np + c * kLanes) * kv;
    }
    if (rem > 0) {
      const float* t0 = qt + r * qt_stride;
      a0 += vload(t0) * tail;
      a1 += vload(t0 + qt_stride) * tail;
      a2 += vload(t0 + 2 * qt_stride) * tail;
      a3 += vload(t0 + 3 * qt_stride) * tail;
    }
    hsum4(a0, a1, a2, a3, out + r * ostride, ostride);
  }
  for (; r < R; ++r) {
    const float* q0 = q + r * np;
    vfloat a0 = vzero();
    for (int64_t c = 0; c < full; ++c) a0 += vload(q0 + c * kLanes) * vload(key + c * kLanes);
    if (rem > 0) a0 += vload(qt + r * qt_stride) * tail;
    out[r * ostride] = hsum(a0);
  }
}

// tail[r, :] = the last n % 16 values of q row r (rows of padded(n) floats), right-aligned in
// 16 lanes with zeros before them: the partner of dot_rows' overlapping last key vector.
inline void fill_tails(float* tail, const float* q, int64_t R, int64_t n) {
  const int64_t np = padded(n), rem = n % kLanes;
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t lane = 0; lane < kLanes; ++lane) {
      const int64_t i = n - kLanes + lane;  // the channel this lane meets in the key
      tail[r * kLanes + lane] = (rem > 0 && i >= n - rem && i >= 0) ? q[r * np + i] : 0.0f;
    }
  }
}

#if defined(__AVX512BF16__)
// The AVX512-BF16 copy (CMakeLists.txt: ponder_cpu_isa(avx512bf16)): a bf16 cache's scores are
// dotted with vdpbf16ps, 32 bf16 pairs per instruction, instead of widening every key value to
// fp32 first. The query is bf16 too (the op takes one dtype), so it is dotted as stored, without
// the scale, and the sum is scaled afterwards: every product q_i k_i of two bf16 values is exact
// in fp32 and only the fp32 accumulation rounds (as in the fp32 path, in another order), so the
// score's error stays |err| <= (2 ceil(n / 32) + 6) 2^-24 scale sum_i |q_i k_i| (n summands in
// 16 lanes, 2 per instruction, then 4 rounds of the horizontal sum and the scaling). vdpbf16ps
// treats bf16 subnormal inputs (|x| < 2^-126) as zero and flushes subnormal sums to zero: an
// absolute error below n 2^-126 scale, far under any rounding error of a real score.
constexpr bool kBf16Dot = true;
constexpr int64_t kBf16Lanes = 32;
inline int64_t padded_bf16(int64_t n) { return (n + kBf16Lanes - 1) / kBf16Lanes * kBf16Lanes; }

inline vfloat from_m512(__m512 x) {
  vfloat v;
  std::memcpy(&v.p[0], &x, sizeof x);
  return v;
}

// out[r * ostride] = scale * dot(q[r, :n], key[:n]) for r < R. q rows are padded_bf16(n) bf16
// values, zeros after n; the key is read only in [0, n) (a masked load for its last partial
// vector, which never touches memory past n). Four query rows share each key load.
inline void dot_rows_bf16(const BFloat16* q, int64_t R, const BFloat16* key, int64_t n,
                          float scale, float* out, int64_t ostride) {
  const int64_t np = padded_bf16(n), full = n / kBf16Lanes, rem = n - full * kBf16Lanes;
  const __mmask32 tail_mask = static_cast<__mmask32>((uint64_t(1) << rem) - 1);
  const __m512bh ktail = (__m512bh)_mm512_maskz_loadu_epi16(tail_mask, key + full * kBf16Lanes);
  auto qv = [&](int64_t r, int64_t c) {
    return (__m512bh)_mm512_loadu_si512(q + r * np + c * kBf16Lanes);
  };
  int64_t r = 0;
  float sums[4];
  for (; r + 4 <= R; r += 4) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t c = 0; c < full; ++c) {
      const __m512bh kv = (__m512bh)_mm512_loadu_si512(key + c * kBf16Lanes);
      a0 = _mm512_dpbf16_ps(a0, qv(r, c), kv);
      a1 = _mm512_dpbf16_ps(a1, qv(r + 1, c), kv);
      a2 = _mm512_dpbf16_ps(a2, qv(r + 2, c), kv);
      a3 = _mm512_dpbf16_ps(a3, qv(r + 3, c), kv);
    }
    if (rem > 0) {
      a0 = _mm512_dpbf16_ps(a0, qv(r, full), ktail);
      a1 = _mm512_dpbf16_ps(a1, qv(r + 1, full), ktail);
      a2 = _mm512_dpbf16_ps(a2, qv(r + 2, full), ktail);
      a3 = _mm512_dpbf16_ps(a3, qv(r + 3, full), ktail);
    }
    hsum4(from_m512(a0), from_m512(a1), from_m512(a2), from_m512(a3), sums, 1);
    for (int i = 0; i < 4; ++i) out[(r + i) * ostride] = sums[i] * scale;
  }
  for (; r < R; ++r) {
    __m512 a0 = _mm512_setzero_ps();
    for (int64_t c = 0; c < full; ++c)
      a0 = _mm512_dpbf16_ps(a0, qv(r, c), (__m512bh)_mm512_loadu_si512(key + c * kBf16Lanes));
    if (rem > 0) a0 = _mm512_dpbf16_ps(a0, qv(r, full), ktail);
    out[r * ostride] = hsum(from_m512(a0)) * scale;
  }
}
#else
constexpr bool kBf16Dot = false;
inline int64_t padded_bf16(int64_t n) { return n; }
#endif

// The bf16 queries of the AVX512-BF16 path (unused elsewhere): qk [R, padded_bf16(T)] gathered,
// qf [R, padded_bf16(D)], both unscaled; `scale` multiplies each dot product.
struct Bf16Queries {
  const BFloat16* qk = nullptr;
  const BFloat16* qf = nullptr;
  float scale = 0.0f;
};

struct AttnShape {
  int64_t batch, hq, hkv, s_len, lp, lr, dim, kept, dv;
  int64_t kp_sb, kp_sh, kp_sl, kr_sb, kr_sh, kr_sl, v_sb, v_sh, v_sl;
  int64_t rows() const { return (hq / hkv) * s_len; }  // query rows per KV head
  int64_t length() const { return lp + lr; }
};

// acc[i, :] += sum_j p[i * kBlock + j] * vrows[j][:] for NR rows (NR <= 4): the output rows
// stay in registers over the whole block, each value row is loaded once per 16-float slice.
template <int NR, class E>
inline void accumulate_rows(float* acc, int64_t dv, const float* p, const E* const* vrows,
                            int64_t jn) {
  const int64_t full = dv / kLanes;
  for (int64_t c = 0; c < full; ++c) {
    vfloat o[NR];
    for (int i = 0; i < NR; ++i) o[i] = vload(acc + i * dv + c * kLanes);
    for (int64_t j = 0; j < jn; ++j) {
      const vfloat x = vload(vrows[j] + c * kLanes);
      for (int i = 0; i < NR; ++i) o[i] += p[i * kBlock + j] * x;
    }
    for (int i = 0; i < NR; ++i) vstore(acc + i * dv + c * kLanes, o[i]);
  }
  for (int64_t d = full * kLanes; d < dv; ++d) {
    for (int i = 0; i < NR; ++i) {
      float t = acc[i * dv + d];
      for (int64_t j = 0; j < jn; ++j) t += p[i * kBlock + j] * load(vrows[j][d]);
      acc[i * dv + d] = t;
    }
  }
}

// The online softmax of one chunk of keys [lo, hi) for the R query rows of KV head (b, h).
// qk: [R, T] gathered queries, qf: [R, D] full queries, both pre-scaled by scale * log2(e), so
// scores are in base 2; qk_tail / qf_tail: their tails for dot_rows (fill_tails). row_end[r]: one past the last key row r sees; `start`: the first.
// On return m[r] (base-2 max), l[r] (sum of 2^(score - m)) and acc[r, :] (unnormalised output).
template <class T>
void attend_chunk(const AttnShape& a, const T* kp, const T* kr, const T* v, const float* qk,
                  const float* qf, const float* qk_tail, const float* qf_tail,
                  const int64_t* row_end, int64_t start, int64_t lo, int64_t hi,
                  float* m, float* l, float* acc, float* kbuf, float* vbuf, float* score,
                  const Bf16Queries& q16) {
  const int64_t R = a.rows();
  for (int64_t r = 0; r < R; ++r) {
    m[r] = kNegInf;
    l[r] = 0.0f;
  }
  std::fill(acc, acc + R * a.dv, 0.0f);
  const int64_t min_end = *std::min_element(row_end, row_end + R);
  for (int64_t j0 = lo; j0 < hi; j0 += kBlock) {
    const int64_t jn = std::min(kBlock, hi - j0);
    // Scores: each key row is read once and dotted with all R query rows.
    for (int64_t jj = 0; jj < jn; ++jj) {
      const int64_t pos = j0 + jj;
      const direct_t<T>* krow;
      const float *qsrc, *qtail;
      const BFloat16* q16src;
      int64_t n;
      if (pos < a.lp) {
        krow = direct_row(kp + pos * a.kp_sl, a.kept, kbuf);
        qsrc = qk;
        qtail = qk_tail;
        q16src = q16.qk;
        n = a.kept;
      } else {
        krow = direct_row(kr + (pos - a.lp) * a.kr_sl, a.dim, kbuf);
        qsrc = qf;
        qtail = qf_tail;
        q16src = q16.qf;
        n = a.dim;
      }
#if defined(__AVX512BF16__)
      if constexpr (std::is_same_v<T, BFloat16>) {
        (void)qsrc;
        (void)qtail;
        dot_rows_bf16(q16src, R, krow, n, q16.scale, score + jj, kBlock);
      } else {
        (void)q16src;
        dot_rows(qsrc, qtail, R, krow, n, score + jj, kBlock);
      }
#else
      (void)q16src;
      dot_rows(qsrc, qtail, R, krow, n, score + jj, kBlock);
#endif
      // Software prefetch two blocks ahead: the arithmetic between loads is enough to leave the
      // hardware prefetcher behind, and a decode step is one long stream over K and V.
      const int64_t ahead = pos + 2 * kBlock;
      if (ahead < hi) {
        const char* kn = ahead < a.lp
                             ? reinterpret_cast<const char*>(kp + ahead * a.kp_sl)
                             : reinterpret_cast<const char*>(kr + (ahead - a.lp) * a.kr_sl);
        const int64_t kbytes = (ahead < a.lp ? a.kept : a.dim) * int64_t(sizeof(T));
        for (int64_t off = 0; off < kbytes; off += 64) __builtin_prefetch(kn + off, 0, 3);
        const char* vn = reinterpret_cast<const char*>(v + ahead * a.v_sl);
        for (int64_t off = 0; off < a.dv * int64_t(sizeof(T)); off += 64)
          __builtin_prefetch(vn + off, 0, 3);
      }
    }
    // Causal / padding mask, only where the block crosses a row's window boundary.
    for (int64_t r = 0; (j0 < start || j0 + jn > min_end) && r < R; ++r) {
      float* sr = score + r * kBlock;
      for (int64_t jj = 0; jj < jn; ++jj) {
        const int64_t pos = j0 + jj;
        if (pos < start || pos >= row_end[r]) sr[jj] = kNegInf;
      }
    }
    // Online softmax update per row; score becomes the probability weight 2^(s - m_new).
    for (int64_t r = 0; r < R; ++r) {
      float* s = score + r * kBlock;
      float mb = kNegInf;
      int nan = 0;
#pragma omp simd reduction(max : mb) reduction(| : nan)
      for (int64_t jj = 0; jj < jn; ++jj) {
        mb = s[jj] > mb ? s[jj] : mb;
        nan |= s[jj] != s[jj];
      }
      // A NaN score (NaN inputs) wins, so it propagates to the output as in torch.
      if (nan) mb = std::numeric_limits<float>::quiet_NaN();
      if (mb == kNegInf || mb != mb) {  // nothing visible in this block for row r, or a NaN
        for (int64_t jj = 0; jj < jn; ++jj) s[jj] = 0.0f;
        if (mb != mb) {
          // Poison the row: m = +inf keeps later blocks from rescaling it, and the merge then
          // gives this chunk weight 1 and a NaN sum, so the output is NaN, as in torch.
          m[r] = std::numeric_limits<float>::infinity();
          l[r] = std::numeric_limits<float>::quiet_NaN();
          std::fill(acc + r * a.dv, acc + (r + 1) * a.dv, l[r]);
        }
        continue;
      }
      const float m_new = std::max(m[r], mb);
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t jj = 0; jj < jn; ++jj) {
        const float p = s[jj] == kNegInf ? 0.0f : think::exp2_neg(s[jj] - m_new);
        s[jj] = p;
        sum += p;
      }
      if (m_new != m[r]) {
        const float alpha = m[r] == kNegInf ? 0.0f : think::exp2_neg(m[r] - m_new);
        l[r] *= alpha;
        float* ar = acc + r * a.dv;
#pragma omp simd
        for (int64_t d = 0; d < a.dv; ++d) ar[d] *= alpha;
        m[r] = m_new;
      }
      l[r] += sum;
    }
    // Values: the block's rows (float16 converted to float once), then the weighted sum.
    const direct_t<T>* vrows[kBlock];
    for (int64_t jj = 0; jj < jn; ++jj)
      vrows[jj] = direct_row(v + (j0 + jj) * a.v_sl, a.dv, vbuf + jj * a.dv);
    for (int64_t r = 0; r < R; r += 4) {
      const int64_t rn = std::min<int64_t>(4, R - r);
      float* ar = acc + r * a.dv;
      const float* pr = score + r * kBlock;
      switch (rn) {
        case 4: accumulate_rows<4>(ar, a.dv, pr, vrows, jn); break;
        case 3: accumulate_rows<3>(ar, a.dv, pr, vrows, jn); break;
        case 2: accumulate_rows<2>(ar, a.dv, pr, vrows, jn); break;
        default: accumulate_rows<1>(ar, a.dv, pr, vrows, jn); break;
      }
    }
  }
}

template <class T>
void pruned_attention_typed(const AttnShape& a, T* out, float* lse, const T* q, const T* kp,
                            const int64_t* idx, const T* kr, const T* v, const int64_t* starts,
                            const int64_t* lengths, float scale, int threads) {
  const int64_t R = a.rows();
  const int64_t L = a.length();
  const int64_t heads = a.batch * a.hkv;
  // Longer chunks when many query rows (a long chunked prefill) would make the partials large:
  // they stay under kPartialBudget floats. The split depends on the shapes only.
  int64_t chunk_keys = kChunkKeys;
  // (The budget test in double: heads * R * Dv is out's element count, but times the chunk
  // count it may not fit in int64 when a zero token stride makes L huge.)
  while (chunk_keys < L &&
         double(heads * R * a.dv) * double((L + chunk_keys - 1) / chunk_keys) > kPartialBudget) {
    chunk_keys *= 2;
  }
  const int64_t chunks = std::max<int64_t>(1, (L + chunk_keys - 1) / chunk_keys);
  const int64_t tasks = heads * chunks;
  // Partials of every task: m, l [tasks, R] and acc [tasks, R, Dv].
  std::vector<float> part_m(tasks * R), part_l(tasks * R), part_acc(tasks * R * a.dv);
  const float qscale = scale * think::kLog2e;
  const int nt = double(heads) * double(L) < kParallelMinRows ? 1 : threads;
  const int64_t wide = std::max(a.dim, a.dv);

#pragma omp parallel num_threads(nt)
  {
    // Zero-padded to whole vectors (dot_rows); kbuf holds a converted key row.
    std::vector<float> qk(R * padded(a.kept), 0.0f), qf(R * padded(a.dim), 0.0f),
        qk_tail(R * kLanes), qf_tail(R * kLanes),
        kbuf(padded(wide), 0.0f), vbuf(std::max(kBlock * a.dv, wide)), score(R * kBlock);
    // The AVX512-BF16 path's unscaled bf16 queries (empty elsewhere), zero-padded likewise.
    constexpr bool bf16_dot = kBf16Dot && std::is_same_v<T, BFloat16>;
    const int64_t tp16 = padded_bf16(a.kept), dp16 = padded_bf16(a.dim);
    std::vector<BFloat16> qk16(bf16_dot ? R * tp16 : 0, BFloat16{0}),
        qf16(bf16_dot ? R * dp16 : 0, BFloat16{0});
    const Bf16Queries q16{qk16.data(), qf16.data(), qscale};
    std::vector<int64_t> row_end(R);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t bh = task / chunks, c = task % chunks;
      const int64_t b = bh / a.hkv, h = bh % a.hkv;
      const int64_t start = starts ? starts[b] : 0;
      const int64_t end = lengths ? lengths[b] : L;
      int64_t last = start;  // one past the last key any row of this head sees
      for (int64_t r = 0; r < R; ++r) {
        const int64_t s = r % a.s_len;
        row_end[r] = std::min(end, std::max<int64_t>(0, end - a.s_len + s + 1));
        last = std::max(last, row_end[r]);
      }
      const int64_t lo = std::max(c * chunk_keys, start);
      const int64_t hi = std::min({(c + 1) * chunk_keys, L, last});
      float* m = part_m.data() + task * R;
      float* l = part_l.data() + task * R;
      float* acc = part_acc.data() + task * R * a.dv;
      if (lo >= hi) {  // padding or beyond every row's reach: read nothing
        std::fill(m, m + R, kNegInf);
        std::fill(l, l + R, 0.0f);
        std::fill(acc, acc + R * a.dv, 0.0f);
        continue;
      }
      // The R query rows of KV head h are contiguous in q: heads h*G .. h*G+G-1, S rows each.
      const T* qh = q + bh * R * a.dim;
      const int64_t* ih = idx + bh * a.kept;
      const int64_t tp = padded(a.kept), dp = padded(a.dim);
      for (int64_t r = 0; r < R; ++r) {
        const T* qr = qh + r * a.dim;
        for (int64_t i = 0; i < a.kept; ++i) qk[r * tp + i] = load(qr[ih[i]]) * qscale;
        for (int64_t d = 0; d < a.dim; ++d) qf[r * dp + d] = load(qr[d]) * qscale;
        if constexpr (bf16_dot) {
          for (int64_t i = 0; i < a.kept; ++i) qk16[r * tp16 + i] = qr[ih[i]];
          for (int64_t d = 0; d < a.dim; ++d) qf16[r * dp16 + d] = qr[d];
        }
      }
      fill_tails(qk_tail.data(), qk.data(), R, a.kept);
      fill_tails(qf_tail.data(), qf.data(), R, a.dim);
      attend_chunk(a, kp + b * a.kp_sb + h * a.kp_sh, kr + b * a.kr_sb + h * a.kr_sh,
                   v + b * a.v_sb + h * a.v_sh, qk.data(), qf.data(), qk_tail.data(),
                   qf_tail.data(), row_end.data(), start, lo, hi, m, l, acc, kbuf.data(),
                   vbuf.data(), score.data(), q16);
    }
    // Merge the chunks of each query row, in chunk order (deterministic).
#pragma omp for schedule(static)
    for (int64_t row = 0; row < heads * R; ++row) {
      const int64_t bh = row / R, r = row % R;
      float mx = kNegInf;
      for (int64_t c = 0; c < chunks; ++c) mx = std::max(mx, part_m[(bh * chunks + c) * R + r]);
      std::vector<float>& o = vbuf;  // reuse: Dv floats
      std::fill(o.begin(), o.begin() + a.dv, 0.0f);
      float total = 0.0f;
      if (mx != kNegInf) {
        for (int64_t c = 0; c < chunks; ++c) {
          const int64_t p = (bh * chunks + c) * R + r;
          if (part_m[p] == kNegInf) continue;
          const float w = think::merge_weight(part_m[p], mx);
          total += w * part_l[p];
          const float* ap = part_acc.data() + p * a.dv;
          for (int64_t d = 0; d < a.dv; ++d) o[d] += w * ap[d];
        }
      }
      T* orow = out + row * a.dv;
      if (total != 0.0f) {  // (a NaN total passes: NaN inputs give a NaN output)
        const float inv = 1.0f / total;
        for (int64_t d = 0; d < a.dv; ++d) store(orow[d], o[d] * inv);
        lse[row] = think::lse_natural(mx, total);
      } else {  // no visible key: zero output, lse = -inf (the reference's convention)
        for (int64_t d = 0; d < a.dv; ++d) store(orow[d], 0.0f);
        lse[row] = kNegInf;
      }
    }
  }
}

}  // namespace

void think_pruned_decode_attention(
    uintptr_t out, int64_t out_numel, uintptr_t lse, int64_t lse_numel, uintptr_t q,
    int64_t q_numel, uintptr_t k_pruned, int64_t k_pruned_numel, uintptr_t idx, int64_t idx_numel,
    uintptr_t k_recent, int64_t k_recent_numel, uintptr_t v, int64_t v_numel, uintptr_t starts,
    int64_t starts_numel, uintptr_t lengths, int64_t lengths_numel, int64_t batch, int64_t hq,
    int64_t hkv, int64_t s_len, int64_t lp, int64_t lr, int64_t dim, int64_t kept, int64_t dv,
    int64_t kp_sb, int64_t kp_sh, int64_t kp_sl, int64_t kr_sb, int64_t kr_sh, int64_t kr_sl,
    int64_t v_sb, int64_t v_sh, int64_t v_sl, int dtype, double scale, int threads) {
  const char* op = "think_pruned_decode_attention";
  threads = check_threads(op, threads);
  think::check_pruned_decode_attention(
      op, out, out_numel, lse, lse_numel, q, q_numel, k_pruned, k_pruned_numel, idx, idx_numel,
      k_recent, k_recent_numel, v, v_numel, starts, starts_numel, lengths, lengths_numel, batch,
      hq, hkv, s_len, lp, lr, dim, kept, dv, kp_sb, kp_sh, kp_sl, kr_sb, kr_sh, kr_sl, v_sb, v_sh,
      v_sl);
  if (batch == 0 || hq == 0 || s_len == 0 || dv == 0) return;  // no output row
  const AttnShape a{batch, hq, hkv, s_len, lp, lr, dim, kept, dv, kp_sb, kp_sh, kp_sl,
                    kr_sb, kr_sh, kr_sl, v_sb, v_sh, v_sl};
  // Every index the kernel uses: channel indices and the per-row key windows.
  const int64_t* ix = reinterpret_cast<const int64_t*>(idx);
  for (int64_t i = 0; i < batch * hkv * kept; ++i)
    PONDER_CHECK(ix[i] >= 0 && ix[i] < dim,
                 op << ": idx holds " << ix[i] << ", outside [0, D = " << dim << ")");
  const int64_t* st = reinterpret_cast<const int64_t*>(starts);
  const int64_t* ln = reinterpret_cast<const int64_t*>(lengths);
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t s0 = st ? st[b] : 0, e0 = ln ? ln[b] : lp + lr;
    PONDER_CHECK(0 <= s0 && s0 <= lp + lr && e0 <= lp + lr && (!ln || s0 <= e0),
                 op << ": row " << b << " has starts = " << s0 << ", lengths = " << e0
                    << "; need 0 <= starts <= lengths <= Lp + Lr = " << lp + lr);
  }
  dispatch_float_dtype(dtype, op, [&](auto tag) {
    using T = decltype(tag);
    pruned_attention_typed<T>(a, reinterpret_cast<T*>(out), reinterpret_cast<float*>(lse),
                              reinterpret_cast<const T*>(q), reinterpret_cast<const T*>(k_pruned),
                              ix, reinterpret_cast<const T*>(k_recent),
                              reinterpret_cast<const T*>(v), st, ln, static_cast<float>(scale),
                              threads);
  });
}

void think_channel_scores(uintptr_t out, int64_t out_numel, uintptr_t q_window,
                          int64_t q_window_numel, uintptr_t k, int64_t k_numel, int64_t batch,
                          int64_t hq, int64_t hkv, int64_t window, int64_t length, int64_t dim,
                          int dtype, int threads) {
  const char* op = "think_channel_scores";
  threads = check_threads(op, threads);
  think::check_channel_scores(op, out, out_numel, q_window, q_window_numel, k, k_numel, batch, hq,
                              hkv, window, length, dim);
  if (dim == 0) return;
  const int64_t heads = batch * hkv;  // fits: out's check multiplied them
  if (heads == 0) return;
  const int64_t group = hq / hkv;
  // Fixed chunks of keys, summed in double: the scores do not depend on the thread count and
  // a mean over 32K squares keeps full float precision.
  const int64_t chunk = 1024;
  const int64_t chunks = (length + chunk - 1) / chunk;
  const int nt = heads * length < kParallelMinRows ? 1 : threads;
  dispatch_float_dtype(dtype, op, [&](auto tag) {
    using T = decltype(tag);
    const T* kk = reinterpret_cast<const T*>(k);
    const T* qq = reinterpret_cast<const T*>(q_window);
    float* o = reinterpret_cast<float*>(out);
    std::vector<double> part(heads * chunks * dim);
#pragma omp parallel num_threads(nt)
    {
#pragma omp for schedule(static)
      for (int64_t task = 0; task < heads * chunks; ++task) {
        const int64_t bh = task / chunks, c = task % chunks;
        double* acc = part.data() + task * dim;
        std::fill(acc, acc + dim, 0.0);
        const int64_t t1 = std::min(length, (c + 1) * chunk);
        for (int64_t t = c * chunk; t < t1; ++t) {
          const T* row = kk + (bh * length + t) * dim;
#pragma omp simd
          for (int64_t j = 0; j < dim; ++j) {
            const double x = load(row[j]);
            acc[j] += x * x;
          }
        }
      }
#pragma omp for schedule(static)
      for (int64_t bh = 0; bh < heads; ++bh) {
        // Query rows of KV head h: heads h*G .. h*G+G-1, W rows each, contiguous.
        const T* qh = qq + bh * group * window * dim;
        for (int64_t j = 0; j < dim; ++j) {
          double ks = 0.0;
          for (int64_t c = 0; c < chunks; ++c) ks += part[(bh * chunks + c) * dim + j];
          double qs = 0.0;
          for (int64_t w = 0; w < group * window; ++w) {
            const double x = load(qh[w * dim + j]);
            qs += x * x;
          }
          o[bh * dim + j] = think::channel_score(qs, group * window, ks, length);
        }
      }
    }
  });
}

}  // namespace ponder::cpu::PONDER_CPU_ISA
