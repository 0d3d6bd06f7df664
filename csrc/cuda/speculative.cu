// CUDA launchers for ponder.ops.speculative, in the order of cuda/common.cuh: validate, then
// launch(). Compiled with --fmad=false (CMakeLists.txt), like cpu/speculative.cpp with
// -ffp-contract=off: every pass must see the same rounded l / T, or a tiny temperature stops
// giving the greedy token (the comment there says why).
//
// accept_tokens runs in two kernels, so that the logits are read at the full memory bandwidth
// and no [B, K, V] temporary exists:
//   1. row_stats: one block per vocabulary row (every target row, then every draft row) reads
//      the row once: its log-sum-exp at the temperature over the kept tokens (an online
//      log-sum-exp), its first argmax, and the logits contract (no NaN, a finite largest
//      logit / T) -- 16 bytes per row in the workspace.
//   2. walk_rows: one block per batch row. One thread runs the test position by position (it
//      reads p(x) and q(x), two logits per position, and the uniforms), stopping at the first
//      rejection; then the whole block runs the exponential race over the final row (target and,
//      at a rejection, draft: argmax_v max(0, p_v - q_v) / E_v), a block reduction taking the
//      first index of the largest key.
// The math per token (exp, the race key, the Philox streams and uniforms) is ponder/random.h and
// ponder/speculative.h, shared with the CPU launcher: with the same seed the CUDA kernels draw
// the same numbers as the CPU; results agree wherever the log-sum-exp rounds alike (the sums run
// in another order here), which is not promised (docs/design.md, "Randomness").
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/ops.h"
#include "ponder/random.h"
#include "ponder/speculative.h"

namespace ponder {
namespace cuda {
namespace {

constexpr int kStatsThreads = 512;
constexpr int kWalkThreads = 512;

// What row_stats leaves for walk_rows, per vocabulary row (the workspace: 2 int64 per row).
struct RowStats {
  float lse;       // log-sum-exp of l / T over the kept tokens
  int32_t ok;      // the logits contract holds
  int64_t argmax;  // first index of the largest logit (0 when none is larger than -inf)
};
static_assert(sizeof(RowStats) == 16, "RowStats is two int64 of the workspace");

// One vocabulary row seen through temperature and a keep-threshold (cpu/speculative.cpp: Row).
template <class T>
struct Row {
  const T* logits;
  float inv_t;
  float thr;  // -inf: keep all

  __device__ float raw(int64_t v) const { return static_cast<float>(load(logits[v])); }
  // float(l) * inv_t, rounded the same way in every pass.
  __device__ static float keep(float l, float thr) {
    return static_cast<float>(l >= thr) * static_cast<float>(l > -INFINITY);
  }
  // The target (or draft) probability of token v: 0 for a token the filters drop.
  __device__ float prob(int64_t v, float lse) const {
    const float l = raw(v);
    if (keep(l, thr) == 0.0f) return 0.0f;
    return expf(l * inv_t - lse);
  }
  // exp(l / T - lse) times the keep weight: the race's p_v (q_v), as on the CPU.
  __device__ float weight(int64_t v, float lse) const {
    const float l = raw(v);
    return speculative::exp_nonpos_f32(l * inv_t - lse) * keep(l, thr);
  }
};

// Running state of one thread (then of the block) over a row.
struct Stats {
  float m;     // max of the kept l / T
  float s;     // sum of exp(l / T - m) over the kept tokens
  float top;   // max raw logit (NaN never wins)
  int nans;
  float best;  // largest logit so far, at index `arg` (first index on ties; -1: none)
  int64_t arg;
};

__device__ __forceinline__ void stats_add(Stats& st, float l, int64_t v, float inv_t, float thr) {
  st.nans += l != l;
  st.top = l > st.top ? l : st.top;
  if (l > st.best) {  // strict: the first index of a tie stays (indices increase per thread)
    st.best = l;
    st.arg = v;
  }
  if (l >= thr && l > -INFINITY) {
    const float x = l * inv_t;
    if (x > st.m) {
      st.s = st.s * speculative::exp_nonpos_f32(st.m - x) + 1.0f;
      st.m = x;
    } else {
      st.s += speculative::exp_nonpos_f32(x - st.m);
    }
  }
}

__device__ __forceinline__ void stats_merge(Stats& a, const Stats& b) {
  const float m = a.m > b.m ? a.m : b.m;
  float s = 0.0f;
  if (a.m > -INFINITY) s += a.s * speculative::exp_nonpos_f32(a.m - m);
  if (b.m > -INFINITY) s += b.s * speculative::exp_nonpos_f32(b.m - m);
  a.m = m;
  a.s = s;
  a.top = b.top > a.top ? b.top : a.top;
  a.nans += b.nans;
  if (b.arg >= 0 && (b.best > a.best || (b.best == a.best && (a.arg < 0 || b.arg < a.arg)))) {
    a.best = b.best;
    a.arg = b.arg;
  }
}

// Four consecutive logits from v (those at or past `vocab` are not read: n says how many are).
template <class T>
__device__ __forceinline__ int load4(const T* row, int64_t v, int64_t vocab, bool vec,
                                     float out[4]) {
  const int n = vocab - v >= 4 ? 4 : static_cast<int>(vocab - v);
  if (vec && n == 4) {
    if constexpr (sizeof(T) == 4) {
      const float4 x = *reinterpret_cast<const float4*>(row + v);
      out[0] = x.x, out[1] = x.y, out[2] = x.z, out[3] = x.w;
      return 4;
    } else if constexpr (sizeof(T) == 2) {
      const uint2 raw = *reinterpret_cast<const uint2*>(row + v);
      const T* h = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int e = 0; e < 4; ++e) out[e] = load(h[e]);
      return 4;
    }
  }
  for (int e = 0; e < n; ++e) out[e] = static_cast<float>(load(row[v + e]));
  return n;
}

template <class T>
__global__ void __launch_bounds__(kStatsThreads)
row_stats(RowStats* __restrict__ out, const T* __restrict__ target, const T* __restrict__ draft,
          const float* __restrict__ target_thr, const float* __restrict__ draft_thr,
          int64_t target_rows, int64_t vocab, float inv_t, bool vec) {
  __shared__ Stats part[kStatsThreads];
  const int64_t r = blockIdx.x;
  const bool is_target = r < target_rows;
  const int64_t rr = is_target ? r : r - target_rows;
  const T* row = (is_target ? target : draft) + rr * vocab;
  const float* thrs = is_target ? target_thr : draft_thr;
  const float thr = thrs != nullptr ? thrs[rr] : -INFINITY;
  Stats st{-INFINITY, 0.0f, -INFINITY, 0, -INFINITY, -1};
  for (int64_t v = int64_t(threadIdx.x) * 4; v < vocab; v += int64_t(kStatsThreads) * 4) {
    float x[4];
    const int n = load4(row, v, vocab, vec, x);
    for (int e = 0; e < n; ++e) stats_add(st, x[e], v + e, inv_t, thr);
  }
  part[threadIdx.x] = st;
  __syncthreads();
  for (int stride = kStatsThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) stats_merge(part[threadIdx.x], part[threadIdx.x + stride]);
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const Stats& t = part[0];
    // The contract (ponder.ops.speculative): no NaN and a finite largest logit times 1/T.
    const bool ok = t.nans == 0 && isfinite(t.top * inv_t);
    out[r] = RowStats{t.m + logf(t.s), ok ? 1 : 0, t.arg >= 0 ? t.arg : 0};
  }
}

// The exponential race over row `target` (minus `draft`, or with token `point` removed), run by
// the whole block: the first index of the largest w_v / E_v with w_v > 0, or -1 when every
// weight is 0. E_v = -log u_v from `race_u` (explicit float64 uniforms) or from Philox block
// v / 4 of (stream, seed), lane v % 4: the CPU's numbers.
template <class T>
__device__ int64_t block_race(const Row<T>& target, float lse_t, const Row<T>* draft, float lse_d,
                              int64_t point, const double* race_u, uint32_t stream,
                              uint64_t seed, int64_t vocab) {
  __shared__ float keys[kWalkThreads];
  __shared__ int64_t args[kWalkThreads];
  float best_key = 0.0f;
  int64_t best = -1;
  for (int64_t g = threadIdx.x; g * 4 < vocab; g += kWalkThreads) {
    float e[4];
    if (race_u != nullptr) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        e[i] = g * 4 + i < vocab ? static_cast<float>(0.0 - log(race_u[g * 4 + i])) : 1.0f;
      }
    } else {
      const random::U32x4 r = random::philox4x32_10(static_cast<uint64_t>(g), stream, seed);
      e[0] = -random::log_f32(random::uniform_open_f32(r.v0));
      e[1] = -random::log_f32(random::uniform_open_f32(r.v1));
      e[2] = -random::log_f32(random::uniform_open_f32(r.v2));
      e[3] = -random::log_f32(random::uniform_open_f32(r.v3));
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t v = g * 4 + i;
      if (v >= vocab) break;
      float w = target.weight(v, lse_t);
      if (draft != nullptr) {
        const float q = draft->weight(v, lse_d);
        w = w - q > 0.0f ? w - q : 0.0f;
      } else if (v == point) {
        w = 0.0f;  // max(0, p - 1)
      }
      // A positive weight over E = +0 is +inf (a certain winner); a zero weight is never 0 / 0.
      const float key = w > 0.0f ? w / e[i] : 0.0f;
      if (key > best_key) {
        best_key = key;
        best = v;
      }
    }
  }
  keys[threadIdx.x] = best_key;
  args[threadIdx.x] = best;
  __syncthreads();
  for (int stride = kWalkThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      const float k2 = keys[threadIdx.x + stride];
      const int64_t a2 = args[threadIdx.x + stride];
      const float k1 = keys[threadIdx.x];
      const int64_t a1 = args[threadIdx.x];
      if (a2 >= 0 && (k2 > k1 || (k2 == k1 && (a1 < 0 || a2 < a1)))) {
        keys[threadIdx.x] = k2;
        args[threadIdx.x] = a2;
      }
    }
    __syncthreads();
  }
  const int64_t winner = args[0];
  __syncthreads();  // keys / args are reused by a second race
  return winner;
}

struct WalkArgs {
  int64_t k, vocab;
  float inv_t;
  bool greedy, per_row_seeds;
};

template <class T>
__global__ void __launch_bounds__(kWalkThreads)
walk_rows(WalkArgs w, int64_t* __restrict__ tokens, int64_t* __restrict__ counts,
          const int64_t* __restrict__ draft_tokens, const T* __restrict__ target,
          const T* __restrict__ draft, const float* __restrict__ target_thr,
          const float* __restrict__ draft_thr, const double* __restrict__ accept_u,
          const double* __restrict__ race_u, const uint64_t* __restrict__ seeds,
          const RowStats* __restrict__ stats) {
  __shared__ int64_t s_accepted, s_final, s_race_j, s_point;
  const int64_t b = blockIdx.x;
  const int64_t k = w.k, vocab = w.vocab;
  const RowStats* st_t = stats + b * (k + 1);                         // target rows of b
  const RowStats* st_d = stats + gridDim.x * (k + 1) + b * k;         // draft rows of b
  const int64_t* x = draft_tokens + b * k;
  const uint64_t seed = seeds != nullptr ? seeds[b] : 0;
  const int64_t srow = w.per_row_seeds ? 0 : b;
  auto target_row = [&](int64_t j) {
    return Row<T>{target + (b * (k + 1) + j) * vocab, w.inv_t,
                  target_thr != nullptr ? target_thr[b * (k + 1) + j] : -INFINITY};
  };
  auto draft_row = [&](int64_t j) {
    return Row<T>{draft + (b * k + j) * vocab, w.inv_t,
                  draft_thr != nullptr ? draft_thr[b * k + j] : -INFINITY};
  };
  if (threadIdx.x == 0) {
    int64_t accepted = 0, final_token = -1, race_j = -1, point = -1, bad = 0;
    // The contract covers every row, read or not: the first bad target row, else the first bad
    // draft row, is reported through a negative count (cpu/ops.inc: accept_tokens).
    for (int64_t j = 0; j <= k && bad == 0; ++j) {
      if (!st_t[j].ok) bad = -1 - j;
    }
    for (int64_t j = 0; draft != nullptr && j < k && bad == 0; ++j) {
      if (!st_d[j].ok) bad = -1 - (k + 1) - j;
    }
    if (bad == 0) {
      for (int64_t j = 0; j < k; ++j) {
        const int64_t xj = x[j];
        // Python checked the draft tokens; one outside [0, V) reads nothing and is rejected.
        const bool x_ok = xj >= 0 && xj < vocab;
        if (w.greedy) {
          const int64_t best = st_t[j].argmax;
          if (!x_ok || best != xj) {
            final_token = best;
            break;
          }
          ++accepted;
          continue;
        }
        const float p = x_ok ? target_row(j).prob(xj, st_t[j].lse) : 0.0f;
        const float q =
            draft == nullptr ? 1.0f : (x_ok ? draft_row(j).prob(xj, st_d[j].lse) : 0.0f);
        const double u = accept_u != nullptr
                             ? accept_u[b * k + j]
                             : random::uniform_at(static_cast<uint64_t>(j),
                                                  speculative::accept_stream(srow), seed);
        if (x_ok && u * static_cast<double>(q) < static_cast<double>(p)) {
          ++accepted;
          continue;
        }
        race_j = j;
        point = draft == nullptr && x_ok ? xj : -1;
        break;
      }
      if (accepted == k) {  // every draft token accepted: a bonus token from p at position K
        if (w.greedy) {
          final_token = st_t[k].argmax;
        } else {
          race_j = k;
          point = -1;
        }
      }
    }
    s_accepted = bad != 0 ? bad : accepted;
    s_final = final_token;
    s_race_j = bad != 0 ? -1 : race_j;
    s_point = point;
  }
  __syncthreads();
  const int64_t race_j = s_race_j;
  int64_t final_token = s_final;
  if (race_j >= 0) {  // uniform over the block
    const Row<T> tr = target_row(race_j);
    const float lse_t = st_t[race_j].lse;
    const double* rrow = race_u != nullptr ? race_u + b * vocab : nullptr;
    const uint32_t stream = speculative::race_stream(srow);
    const bool with_draft = draft != nullptr && race_j < k;
    Row<T> dr{};
    float lse_d = 0.0f;
    if (with_draft) {
      dr = draft_row(race_j);
      lse_d = st_d[race_j].lse;
    }
    final_token = block_race(tr, lse_t, with_draft ? &dr : nullptr, lse_d, s_point, rrow, stream,
                             seed, vocab);
    if (final_token < 0) {  // p <= q everywhere (rounding): fall back to p itself
      final_token = block_race<T>(tr, lse_t, nullptr, 0.0f, -1, rrow, stream, seed, vocab);
    }
  }
  if (threadIdx.x == 0) {
    int64_t* o = tokens + b * (k + 1);
    const int64_t accepted = s_accepted;
    if (accepted < 0) {  // a bad row: Python raises; the outputs are never returned
      for (int64_t j = 0; j <= k; ++j) o[j] = -1;
    } else {
      for (int64_t j = 0; j < accepted; ++j) o[j] = x[j];
      o[accepted] = final_token;
      for (int64_t j = accepted + 1; j <= k; ++j) o[j] = -1;
    }
    counts[b] = accepted;
  }
}

__global__ void accept_steps_kernel(bool* __restrict__ accepted, double* __restrict__ weights,
                                    const double* __restrict__ rewards,
                                    const double* __restrict__ uniforms, int64_t n, int kind,
                                    double threshold, double sharpness, uint64_t seed) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const double wi = speculative::step_weight(kind, rewards[i], threshold, sharpness);
    weights[i] = wi;
    const double u = uniforms != nullptr
                         ? uniforms[i]
                         : random::uniform_at(static_cast<uint64_t>(i), speculative::kStepStream,
                                              seed);
    accepted[i] = u < wi;  // omega = 1 always accepts, omega = 0 (or NaN) never does
  }
}

}  // namespace

void accept_tokens(uintptr_t tokens_out, int64_t tokens_out_numel, uintptr_t counts_out,
                   int64_t counts_out_numel, uintptr_t draft_tokens, int64_t draft_tokens_numel,
                   uintptr_t target_logits, int64_t target_logits_numel, uintptr_t draft_logits,
                   int64_t draft_logits_numel, uintptr_t target_thr, int64_t target_thr_numel,
                   uintptr_t draft_thr, int64_t draft_thr_numel, uintptr_t accept_u,
                   int64_t accept_u_numel, uintptr_t race_u, int64_t race_u_numel,
                   uintptr_t seeds, int64_t seeds_numel, uintptr_t workspace,
                   int64_t workspace_numel, int64_t batch, int64_t k, int64_t vocab, int dtype,
                   double temperature, int per_row_seeds, int device, uintptr_t stream) {
  const char* op = "accept_tokens";
  speculative::check_accept_tokens(
      op, tokens_out, tokens_out_numel, counts_out, counts_out_numel, draft_tokens,
      draft_tokens_numel, target_logits, target_logits_numel, draft_logits, draft_logits_numel,
      target_thr, target_thr_numel, draft_thr, draft_thr_numel, accept_u, accept_u_numel, race_u,
      race_u_numel, seeds, seeds_numel, batch, k, vocab, temperature);
  const bool greedy = temperature == 0.0;
  const bool has_draft = draft_logits != 0 || draft_logits_numel != 0;
  // Row statistics: 2 int64 per target row, then per draft row (room for both either way).
  check_buffer(op, {"workspace", workspace, workspace_numel}, {batch, 2 * k + 1, 2});
  const int64_t target_rows = batch * (k + 1);  // fits: tokens_out's check multiplied them
  const int64_t rows = target_rows + (has_draft ? batch * k : 0);
  PONDER_CHECK(rows < 2147483647, op << ": B * (2K + 1) = " << rows << " rows exceed one launch");
  launch(op, device, stream, dtype, batch, [&](auto tag, cudaStream_t s) {
    using T = decltype(tag);
    const float inv_t = greedy ? 1.0f : static_cast<float>(1.0 / temperature);
    RowStats* stats = reinterpret_cast<RowStats*>(workspace);
    // 16-byte loads need every row on a 16-byte boundary; doubles are read one by one.
    const bool vec = sizeof(T) <= 4 && (vocab * int64_t(sizeof(T))) % 16 == 0 &&
                     target_logits % 16 == 0 && (!has_draft || draft_logits % 16 == 0);
    row_stats<T><<<static_cast<unsigned>(rows), kStatsThreads, 0, s>>>(
        stats, reinterpret_cast<const T*>(target_logits),
        reinterpret_cast<const T*>(draft_logits), reinterpret_cast<const float*>(target_thr),
        reinterpret_cast<const float*>(draft_thr), target_rows, vocab, inv_t, vec);
    check_launch(op);
    walk_rows<T><<<static_cast<unsigned>(batch), kWalkThreads, 0, s>>>(
        WalkArgs{k, vocab, inv_t, greedy, per_row_seeds != 0},
        reinterpret_cast<int64_t*>(tokens_out), reinterpret_cast<int64_t*>(counts_out),
        reinterpret_cast<const int64_t*>(draft_tokens), reinterpret_cast<const T*>(target_logits),
        reinterpret_cast<const T*>(draft_logits), reinterpret_cast<const float*>(target_thr),
        reinterpret_cast<const float*>(draft_thr), reinterpret_cast<const double*>(accept_u),
        reinterpret_cast<const double*>(race_u), reinterpret_cast<const uint64_t*>(seeds),
        stats);
  });
}

void accept_steps(uintptr_t accepted_out, int64_t accepted_out_numel, uintptr_t weights_out,
                  int64_t weights_out_numel, uintptr_t rewards, int64_t rewards_numel,
                  uintptr_t uniforms, int64_t uniforms_numel, int64_t n, int kind,
                  double threshold, double sharpness, uint64_t seed, int device,
                  uintptr_t stream) {
  const char* op = "accept_steps";
  speculative::check_accept_steps(op, accepted_out, accepted_out_numel, weights_out,
                                  weights_out_numel, rewards, rewards_numel, uniforms,
                                  uniforms_numel, n, kind);
  // The buffers are float64 and bool whatever the rewards' dtype: no dtype to dispatch.
  launch(op, device, stream, kFloat64, n, [&](auto, cudaStream_t s) {
    const int64_t blocks = (n + 255) / 256;
    accept_steps_kernel<<<static_cast<unsigned>(blocks < 4096 ? blocks : 4096), 256, 0, s>>>(
        reinterpret_cast<bool*>(accepted_out), reinterpret_cast<double*>(weights_out),
        reinterpret_cast<const double*>(rewards), reinterpret_cast<const double*>(uniforms), n,
        kind, threshold, sharpness, seed);
  });
}

}  // namespace cuda
}  // namespace ponder
