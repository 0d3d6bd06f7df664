// CPU launchers for ponder.ops.speculative: validate -> dispatch dtype -> OpenMP over batch rows ->
// per row, the speculative-sampling test position by position, stopping at the first rejection.
// A vocabulary row is read from memory once for its log-sum-exp (one online pass, block by block)
// and, at the final position only, once more for the exponential race; no probability row is
// ever stored. The logits contract (no NaN, a finite largest logit / T) is checked in the same
// pass; rows the test does not reach are checked afterwards, and a bad row is reported
// through a negative count (see ops.inc).
#include <algorithm>
#include <cmath>
#include <limits>

#include "cpu/kernel.h"
#include "cpu/philox.h"
#include "ponder/random.h"
#include "ponder/speculative.h"

namespace ponder::cpu::PONDER_CPU_ISA {
namespace {

// Vocabulary entries per inner block (a multiple of 4: one Philox block draws 4 uniforms).
constexpr int64_t kBlock = 1024;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// a * b + c, fused where the build has FMA (AVX2, AVX-512): one instruction, one rounding. The
// baseline x86-64 build has no FMA instruction, and std::fma there is a scalar libm call that
// would stop the loops from vectorising, so it multiplies and adds (rounding twice).
inline float fma_f32(float a, float b, float c) {
#ifdef __FMA__
  return __builtin_fmaf(a, b, c);
#else
  return a * b + c;
#endif
}

// exp(x) = p(r) * 2^n with n = round(x / ln2), r = x - n ln2 (|r| <= ln2 / 2), p the degree-6
// Taylor polynomial of speculative::exp_nonpos_f32 (relative error < 3e-7: the remainder is
// 1.2e-7 at |r| = ln2 / 2, the rest float rounding), for x in [-104, 0] (and a rounding above).
// Cheaper than exp_nonpos_f32's: n by the 1.5 * 2^23 shifter (one FMA; t's last mantissa bits
// hold n, |n| < 2^22) instead of a float -> int -> float round trip, and the reduction and the
// polynomial as FMAs where the build has them. Returns p and t's bits (0x4B400000 + n).
struct ExpParts {
  float p;
  uint32_t t_bits;
};
inline ExpParts exp_parts(float x) {
  const float shifter = 12582912.0f;  // 1.5 * 2^23
  const float t = fma_f32(x, 1.44269504088896341f, shifter);
  const float n = t - shifter;
  float r = fma_f32(n, -0.693145751953125f, x);  // ln2's leading bits: n * hi is exact
  r = fma_f32(n, -1.42860682030941723e-06f, r);
  float p = fma_f32(r, 1.0f / 720, 1.0f / 120);
  p = fma_f32(p, r, 1.0f / 24);
  p = fma_f32(p, r, 1.0f / 6);
  p = fma_f32(p, r, 0.5f);
  p = fma_f32(p, r, 1.0f);
  p = fma_f32(p, r, 1.0f);
  return {p, random::float_bits(t)};
}

// exp(x) for the log-sum-exp's sum only (x = l / T - m <= 0, or -inf for masked entries), about
// half exp_nonpos_f32's instructions: exp_parts, with x clamped at -87 so that 2^n stays a normal
// float (n >= -126): no in-range mask, no subnormal scaling. Below -87 it returns about
// exp(-87) = 1.6e-38 instead of exp(x) (for -inf too, where exp_nonpos_f32 gives 0): in a sum
// whose largest term is exp(0) = 1 the V <= 2^31 such terms add at most 3.5e-29 relative, far
// below float's or double's rounding. tests/ops/test_speculative.py checks the resulting
// acceptance probabilities against float64. Not for probabilities or race weights, where a
// weight of 1e-38 instead of 0 can win a race (those use exp_race_f32).
inline float exp_sum_f32(float x) {
  // std::max(x, c) is (x < c ? c : x), which is one vmaxps (x > c ? x : c compiled to a compare
  // and a blend); a NaN x stays NaN, which only a row that breaks the logits contract forms.
  const ExpParts e = exp_parts(std::max(x, -87.0f));
  return e.p * random::bits_float((e.t_bits - 0x4B400000u + 127u) << 23);  // p * 2^n
}

// exp(x) for the race's weights (x = l / T - lse, at most a rounding above 0): exp_parts with
// exp_nonpos_f32's range handling, so that its results are those of exp_nonpos_f32 up to the
// FMAs' rounding (a few ulps): inputs below -104 (and -inf) give exactly 0, results below
// exp(-87) are subnormal (2^(n + 64), exact, then 2^-64, rounding once). A weight of
// exp(-1e30) must be 0, not 1e-38: it would win races whose other weights are 0.
inline float exp_race_f32(float x) {
  const float in_range = static_cast<float>(x >= -104.0f);
  const ExpParts e = exp_parts(x > -104.0f ? x : -104.0f);
  // n >= -151 here, so n + 127 + 64 > 0.
  const float two_n64 = random::bits_float((e.t_bits - 0x4B400000u + 191u) << 23);
  return in_range * (e.p * two_n64) * 5.42101086242752217e-20f;  // 2^-64
}

// One vocabulary row seen through temperature and a keep-threshold: s_v = l_v / T, kept when
// l_v >= thr and l_v > -inf (a 0/1 float weight, so that loops multiply instead of branching).
template <class T>
struct Row {
  const T* logits;
  int64_t vocab;
  float inv_t;
  float thr;  // -inf: keep all

  // float(l) * inv_t in float, for every T: the max pass rounds it so, and every pass must see the
  // same rounded value (for double logits, l * inv_t in double differs by an ulp, which at
  // |l / T| ~ 1e20 is enough to make the argmax's probability exp(-ulp) = 0).
  float s(int64_t v) const { return static_cast<float>(load(logits[v])) * inv_t; }
  float keep(int64_t v) const {
    const float l = load(logits[v]);
    return static_cast<float>(l >= thr) * static_cast<float>(l > kNegInf);
  }
  float scaled(int64_t v) const { return keep(v) != 0.0f ? s(v) : kNegInf; }
  // Without top-k / top-p every token is kept: the unfiltered loops (branch-free) weigh a -inf
  // logit exp_race_f32(-inf) = 0.
  bool filtered() const { return thr > kNegInf; }

  // The logits contract (ponder.ops.speculative): no NaN, and the largest logit (as float32)
  // times 1/T is finite -- which refuses +inf, a row of only -inf and a logit that overflows at
  // the temperature, while -inf entries stay legal (masked tokens).
  bool contract_ok(float top, int nans) const { return nans == 0 && std::isfinite(top * inv_t); }

  // The contract check alone, for the rows the test itself never reads.
  bool ok() const {
    const T* lg = logits;
    float top = kNegInf;
    int nans = 0;
#pragma omp simd reduction(max : top) reduction(+ : nans)
    for (int64_t v = 0; v < vocab; ++v) {
      const float l = load(lg[v]);
      top = std::max(top, l);
      nans += l != l;
    }
    return contract_ok(top, nans);
  }

  // The log-sum-exp of the kept scaled logits in one read of the row, an online log-sum-exp
  // block by block (kBlock logits, 4 KiB in fp32, so a block stays in L1): once a running
  // maximum m exists, one loop per block takes the block's maximum and its sum of exp(s - m)
  // together, which is the block's contribution whenever the block does not raise m (after the
  // first blocks, almost always: the k-th block holds a new maximum of a shuffled row with
  // probability 1 / k). A block that does raise m is summed again from L1 against the new m and
  // the earlier total is rescaled by exp(m_old - m_new) (as the CUDA kernel does per thread).
  // So the memory read of each row overlaps its exponentials, where a max pass over the whole
  // row then a sum pass (from L2) ran them one after the other; a row sorted ascending (every
  // block a new maximum) costs one sum pass more than that. Every term is exp(s - m) against
  // the final m of its block, as before. The same pass checks the contract on the raw logits
  // at no extra read: `ok` says whether it holds (when it does not, `value` is meaningless and
  // the caller stops).
  struct Lse {
    float value;
    bool ok;
  };
  Lse lse() const {
    // The loops read locals, not members: GCC does not vectorise them through `this` where lse
    // is not inlined. The arithmetic is s(v) and keep(v)'s, which prob() and race() repeat.
    const T* lg = logits;
    const float it = inv_t, th = thr;
    const bool filt = filtered();
    float m = kNegInf, top = kNegInf;
    int nans = 0;
    double total = 0.0;
    // sum over the block of exp(s - mm) for the kept tokens (mm >= every kept s of the block).
    auto block_sum = [&](int64_t b, int64_t n, float mm) {
      float sum = 0.0f;
      if (filt) {
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < n; ++i) {
          const float l = load(lg[b + i]);
          const float keep = static_cast<float>(l >= th) * static_cast<float>(l > kNegInf);
          sum += exp_sum_f32(l * it - mm) * keep;
        }
      } else {  // the common case, kept branch-free so that it vectorises
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < n; ++i) sum += exp_sum_f32(load(lg[b + i]) * it - mm);
      }
      return sum;
    };
    for (int64_t b = 0; b < vocab; b += kBlock) {
      const int64_t n = std::min(kBlock, vocab - b);
      const float mm = m;
      float bm = kNegInf, bt = kNegInf, sum = 0.0f;
      int bn = 0;
      if (mm > kNegInf) {
        // Max and sum in one loop. Where the block raises m, some s - mm > 0 and the sum (then
        // possibly inf or NaN) is discarded below. Excluded tokens have s <= mm: they are below
        // the threshold, and a kept token (at least th / T) set mm.
        if (filt) {
#pragma omp simd reduction(max : bm, bt) reduction(+ : bn, sum)
          for (int64_t i = 0; i < n; ++i) {
            const float l = load(lg[b + i]);
            const float keep = static_cast<float>(l >= th) * static_cast<float>(l > kNegInf);
            bm = std::max(bm, l >= th ? l * it : kNegInf);
            bt = std::max(bt, l);
            bn += l != l;
            sum += exp_sum_f32(l * it - mm) * keep;
          }
        } else {  // every token kept: std::max(bm, NaN) is bm, so no threshold test (one vmaxps)
#pragma omp simd reduction(max : bm, bt) reduction(+ : bn, sum)
          for (int64_t i = 0; i < n; ++i) {
            const float l = load(lg[b + i]);
            bm = std::max(bm, l * it);
            bt = std::max(bt, l);
            bn += l != l;
            sum += exp_sum_f32(l * it - mm);
          }
        }
      } else {  // no kept token yet: the block's maximum first
#pragma omp simd reduction(max : bm, bt) reduction(+ : bn)
        for (int64_t i = 0; i < n; ++i) {
          const float l = load(lg[b + i]);
          bm = std::max(bm, l >= th ? l * it : kNegInf);
          bt = std::max(bt, l);
          bn += l != l;
        }
      }
      top = std::max(top, bt);
      nans += bn;
      if (!(bm > mm)) {  // m stands (a block of only -inf or excluded logits adds 0 here)
        total += sum;
        continue;
      }
      // A new maximum: exp(m_old - m_new) in the exact exp (one value per block); m_old = -inf
      // leaves the total 0.
      if (mm > kNegInf) total *= speculative::exp_nonpos_f32(mm - bm);
      m = bm;
      total += block_sum(b, n, bm);
    }
    if (!contract_ok(top, nans)) return {m, false};
    return {m + static_cast<float>(std::log(total)), true};
  }

  float prob(int64_t v, float lse) const {
    const float x = scaled(v);
    return x == kNegInf ? 0.0f : std::exp(x - lse);
  }

  // First index of the largest logit (greedy decoding; temperature and filters do not move it).
  // *ok: whether the row keeps the contract (checked in the same pass).
  int64_t argmax(bool* ok) const {
    int64_t best = 0;
    float bv = load(logits[0]);
    int nans = bv != bv;
    for (int64_t v = 1; v < vocab; ++v) {
      const float l = load(logits[v]);
      nans += l != l;
      if (l > bv || (bv != bv && l == l)) {  // a NaN never wins over a number
        bv = l;
        best = v;
      }
    }
    *ok = contract_ok(bv, nans);
    return best;
  }
};

// key_i = w_i / e_i where w_i > 0, else +0 (in place over key = w), and their maximum.
// A positive weight over E = +0 is +inf (a certain winner); a zero weight stays 0, never 0/0.
// The quotient is formed for every lane and masked to +0 where w <= 0 (discarding a 0/0):
// written as a conditional division or a select, GCC turned it back into a branch and the AVX2
// build kept this loop scalar (a branch and a vdivss per token). Its own function, not inlined:
// inlined into race(), GCC duplicated the loop behind each of race()'s branches and vectorised
// only one copy, so the common paths ran the scalar copy (a vdivss per token; 25% of the race's
// samples in perf).
// (The maximum is taken of the local value: reading key[i] back, GCC again kept it scalar.)
__attribute__((noinline)) float race_keys(float* __restrict key, const float* __restrict e,
                                          int64_t n) {
  float bm = 0.0f;
#pragma omp simd reduction(max : bm)
  for (int64_t i = 0; i < n; ++i) {
    const float w = key[i], ratio = w / e[i];
    const uint32_t keep = 0u - static_cast<uint32_t>(w > 0.0f);
    const float k = random::bits_float(random::float_bits(ratio) & keep);
    key[i] = k;
    bm = std::max(bm, k);
  }
  return bm;
}

// Sample v with probability proportional to w_v = max(0, p_v - q_v) by an exponential race:
// argmax_v w_v / E_v with E_v ~ Exp(1) independent. No normalisation of w is needed. q is the draft
// row (draft != nullptr), a point mass on `point` (point >= 0), or zero (bonus token: w = p).
// E_v = -log u_v, from `race_u` (explicit float64 uniforms) or Philox (stream, seed).
template <class T>
int64_t race(const Row<T>& target, float lse_t, const Row<T>* draft, float lse_d, int64_t point,
             const double* race_u, uint32_t stream, uint64_t seed) {
  const int64_t vocab = target.vocab;
  int64_t best = -1;
  float best_key = 0.0f;
  float key[kBlock];
  for (int64_t b = 0; b < vocab; b += kBlock) {
    const int64_t n = std::min(kBlock, vocab - b);
    float e[kBlock];
    if (race_u != nullptr) {
      for (int64_t i = 0; i < n; ++i) e[i] = static_cast<float>(0.0 - std::log(race_u[b + i]));  // u = 1: +0, not -0
    } else {
      // The Philox words first (cpu/philox.h: vector multiplies), then the exponentials.
      const uint64_t first = static_cast<uint64_t>(b) / 4;
      const int64_t blocks = (n + 3) / 4;
      uint32_t w[4][kBlock / 4];
      philox_words(w[0], w[1], w[2], w[3], blocks, first, stream, seed);
#pragma omp simd
      for (int64_t j = 0; j < blocks; ++j) {
        e[4 * j] = -random::log_f32(random::uniform_open_f32(w[0][j]));
        e[4 * j + 1] = -random::log_f32(random::uniform_open_f32(w[1][j]));
        e[4 * j + 2] = -random::log_f32(random::uniform_open_f32(w[2][j]));
        e[4 * j + 3] = -random::log_f32(random::uniform_open_f32(w[3][j]));
      }
    }
    if (target.filtered()) {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        key[i] = exp_race_f32(target.s(b + i) - lse_t) * target.keep(b + i);
      }
    } else {
      const T* lt = target.logits + b;
      const float it = target.inv_t;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        key[i] = exp_race_f32(static_cast<float>(load(lt[i])) * it - lse_t);
      }
    }
    if (draft != nullptr) {
      if (draft->filtered()) {
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) {
          const float q =
              exp_race_f32(draft->s(b + i) - lse_d) * draft->keep(b + i);
          key[i] = std::max(key[i] - q, 0.0f);
        }
      } else {
        const T* ld = draft->logits + b;
        const float it = draft->inv_t;
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) {
          const float q =
              exp_race_f32(static_cast<float>(load(ld[i])) * it - lse_d);
          key[i] = std::max(key[i] - q, 0.0f);
        }
      }
    } else if (point >= b && point < b + n) {
      key[point - b] = 0.0f;  // max(0, p - 1)
    }
    const float bm = race_keys(key, e, n);
    if (bm > best_key) {
      for (int64_t i = 0; i < n; ++i) {
        if (key[i] == bm) {
          best = b + i;
          break;
        }
      }
      best_key = bm;
    }
  }
  return best;  // -1: every weight is 0
}

}  // namespace

void accept_tokens(uintptr_t tokens_out, int64_t tokens_out_numel, uintptr_t counts_out,
                   int64_t counts_out_numel, uintptr_t draft_tokens, int64_t draft_tokens_numel,
                   uintptr_t target_logits, int64_t target_logits_numel, uintptr_t draft_logits,
                   int64_t draft_logits_numel, uintptr_t target_thr, int64_t target_thr_numel,
                   uintptr_t draft_thr, int64_t draft_thr_numel, uintptr_t accept_u,
                   int64_t accept_u_numel, uintptr_t race_u, int64_t race_u_numel,
                   uintptr_t seeds, int64_t seeds_numel, int64_t batch, int64_t k, int64_t vocab,
                   int dtype, double temperature, int per_row_seeds, int threads) {
  const char* op = "accept_tokens";
  threads = check_threads(op, threads);
  speculative::check_accept_tokens(
      op, tokens_out, tokens_out_numel, counts_out, counts_out_numel, draft_tokens,
      draft_tokens_numel, target_logits, target_logits_numel, draft_logits, draft_logits_numel,
      target_thr, target_thr_numel, draft_thr, draft_thr_numel, accept_u, accept_u_numel, race_u,
      race_u_numel, seeds, seeds_numel, batch, k, vocab, temperature);
  const bool greedy = temperature == 0.0;
  if (batch == 0) return;
  const int64_t* x = reinterpret_cast<const int64_t*>(draft_tokens);
  // Every index this launcher uses comes from draft_tokens: check them all before any work.
  for (int64_t i = 0; i < batch * k; ++i) {
    PONDER_CHECK(x[i] >= 0 && x[i] < vocab, op << ": draft token " << x[i] << " at flat index "
                                                << i << " is outside [0, " << vocab << ")");
  }
  dispatch_dtype(dtype, op, [&](auto tag) {
    using T = decltype(tag);
    int64_t* out = reinterpret_cast<int64_t*>(tokens_out);
    int64_t* counts = reinterpret_cast<int64_t*>(counts_out);
    const T* lt = reinterpret_cast<const T*>(target_logits);
    const T* ld = reinterpret_cast<const T*>(draft_logits);
    const float* tt = reinterpret_cast<const float*>(target_thr);
    const float* dt = reinterpret_cast<const float*>(draft_thr);
    const double* au = reinterpret_cast<const double*>(accept_u);
    const double* ru = reinterpret_cast<const double*>(race_u);
    const uint64_t* sd = reinterpret_cast<const uint64_t*>(seeds);
    const float inv_t = greedy ? 1.0f : static_cast<float>(1.0 / temperature);
    const int nt = static_cast<int>(std::min<int64_t>(threads, batch));
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t b = 0; b < batch; ++b) {
      int64_t* o = out + b * (k + 1);
      const uint64_t seed = sd != nullptr ? sd[b] : 0;
      const int64_t srow = per_row_seeds ? 0 : b;
      auto target_row = [&](int64_t j) {
        return Row<T>{lt + (b * (k + 1) + j) * vocab, vocab, inv_t,
                      tt != nullptr ? tt[b * (k + 1) + j] : kNegInf};
      };
      auto draft_row = [&](int64_t j) {
        return Row<T>{ld + (b * k + j) * vocab, vocab, inv_t,
                      dt != nullptr ? dt[b * k + j] : kNegInf};
      };
      int64_t accepted = 0;
      int64_t final_token = -1;
      // The logits contract: the first target row / draft row of b that breaks it (-1: none),
      // and the first row of each not yet checked. The test checks every row it reads; a
      // bad row stops it, and the rows it did not reach are checked at the end.
      int64_t bad_t = -1, bad_d = -1, next_t = 0, next_d = 0;
      bool ok = true;
      for (int64_t j = 0; j < k; ++j) {
        const int64_t xj = x[b * k + j];
        const Row<T> tr = target_row(j);
        next_t = j + 1;
        if (greedy) {
          const int64_t best = tr.argmax(&ok);
          if (!ok) {
            bad_t = j;
            break;
          }
          if (best != xj) {
            final_token = best;
            break;
          }
          o[j] = xj;
          ++accepted;
          continue;
        }
        const auto [lse_t, ok_t] = tr.lse();
        if (!ok_t) {
          bad_t = j;
          break;
        }
        const float p = tr.prob(xj, lse_t);
        float q = 1.0f, lse_d = 0.0f;
        Row<T> dr{};
        if (ld != nullptr) {
          dr = draft_row(j);
          next_d = j + 1;
          const auto [lse, ok_d] = dr.lse();
          lse_d = lse;
          if (!ok_d) {
            bad_d = j;
            break;
          }
          q = dr.prob(xj, lse_d);
        }
        const double u = au != nullptr
                             ? au[b * k + j]
                             : random::uniform_at(static_cast<uint64_t>(j),
                                                  speculative::accept_stream(srow), seed);
        if (u * static_cast<double>(q) < static_cast<double>(p)) {
          o[j] = xj;
          ++accepted;
          continue;
        }
        const double* rrow = ru != nullptr ? ru + b * vocab : nullptr;
        const uint32_t rs = speculative::race_stream(srow);
        final_token = race(tr, lse_t, ld != nullptr ? &dr : nullptr, lse_d, ld != nullptr ? -1 : xj,
                           rrow, rs, seed);
        if (final_token < 0) {  // p <= q everywhere (rounding): fall back to p itself
          final_token = race<T>(tr, lse_t, nullptr, 0.0f, -1, rrow, rs, seed);
        }
        break;
      }
      if (accepted == k) {  // every draft token accepted: a bonus token from p at position K
        const Row<T> tr = target_row(k);
        next_t = k + 1;
        if (greedy) {
          final_token = tr.argmax(&ok);
        } else {
          const auto [lse_t, ok_t] = tr.lse();
          ok = ok_t;
          if (ok) {
            final_token = race<T>(tr, lse_t, nullptr, 0.0f, -1,
                                  ru != nullptr ? ru + b * vocab : nullptr,
                                  speculative::race_stream(srow), seed);
          }
        }
        if (!ok) bad_t = k;
      }
      o[accepted] = final_token;
      for (int64_t j = accepted + 1; j <= k; ++j) o[j] = -1;
      counts[b] = accepted;
      // The contract covers every row, read or not, so that whether a call is refused depends
      // on its inputs alone, never on the random draws. A target row is reported before a draft
      // row, each the first of its row b.
      for (int64_t j = next_t; bad_t < 0 && j <= k; ++j) {
        if (!target_row(j).ok()) bad_t = j;
      }
      for (int64_t j = next_d; ld != nullptr && bad_t < 0 && bad_d < 0 && j < k; ++j) {
        if (!draft_row(j).ok()) bad_d = j;
      }
      if (bad_t >= 0) {
        counts[b] = -1 - bad_t;
      } else if (bad_d >= 0) {
        counts[b] = -1 - (k + 1) - bad_d;
      }
    }
  });
}

void accept_steps(uintptr_t accepted_out, int64_t accepted_out_numel, uintptr_t weights_out,
                  int64_t weights_out_numel, uintptr_t rewards, int64_t rewards_numel,
                  uintptr_t uniforms, int64_t uniforms_numel, int64_t n, int kind,
                  double threshold, double sharpness, uint64_t seed, int threads) {
  const char* op = "accept_steps";
  check_threads(op, threads);  // one thread: the loop is cheaper than a fork
  speculative::check_accept_steps(op, accepted_out, accepted_out_numel, weights_out,
                                  weights_out_numel, rewards, rewards_numel, uniforms,
                                  uniforms_numel, n, kind);
  bool* acc = reinterpret_cast<bool*>(accepted_out);
  double* w = reinterpret_cast<double*>(weights_out);
  const double* r = reinterpret_cast<const double*>(rewards);
  const double* u = reinterpret_cast<const double*>(uniforms);
  for (int64_t i = 0; i < n; ++i) {
    w[i] = speculative::step_weight(kind, r[i], threshold, sharpness);
    const double ui = u != nullptr ? u[i]
                                   : random::uniform_at(static_cast<uint64_t>(i),
                                                        speculative::kStepStream, seed);
    // u in (0, 1): omega = 1 always accepts, omega = 0 (or NaN) never does.
    acc[i] = ui < w[i];
  }
}

}  // namespace ponder::cpu::PONDER_CPU_ISA
