// CPU launcher for ponder.ops.prm: validate (every position re-checked against L, serially,
// before any thread starts) -> dispatch dtype -> OpenMP over (row, step) pairs: the dot products
// of the hidden row at the step position with the 1 or 2 head rows, fp32 accumulation ->
// per-row aggregates. Only the B x S hidden rows at step positions are read.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/kernel.h"
#include "ponder/prm.h"

namespace ponder::cpu::PONDER_CPU_ISA {
namespace {

// Below this many multiply-adds the OpenMP fork costs more than it saves.
constexpr int64_t kParallelMin = 1 << 15;

// dot(row, w) over `width` values, accumulated in Acc; `row` is dense (unit stride).
template <class T, class Acc>
Acc dot(const T* row, const Acc* w, int64_t width) {
  Acc acc = Acc(0);
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < width; ++i) acc += load(row[i]) * w[i];
  return acc;
}

// Both label logits in one pass over the row (the row is read once).
template <class T, class Acc>
void dot2(const T* row, const Acc* w0, const Acc* w1, int64_t width, Acc* z0, Acc* z1) {
  Acc a0 = Acc(0), a1 = Acc(0);
#pragma omp simd reduction(+ : a0, a1)
  for (int64_t i = 0; i < width; ++i) {
    const Acc x = load(row[i]);
    a0 += x * w0[i];
    a1 += x * w1[i];
  }
  *z0 = a0;
  *z1 = a1;
}

}  // namespace

void prm_steps(uintptr_t logits, int64_t logits_numel, uintptr_t scores, int64_t scores_numel,
               uintptr_t mins, int64_t mins_numel, uintptr_t lasts, int64_t lasts_numel,
               uintptr_t products, int64_t products_numel, uintptr_t means, int64_t means_numel,
               uintptr_t num_steps, int64_t num_steps_numel, uintptr_t hidden,
               int64_t hidden_numel, uintptr_t step_index, int64_t step_index_numel,
               uintptr_t head, int64_t head_numel, uintptr_t bias, int64_t bias_numel,
               int64_t batch, int64_t length, int64_t width, int64_t steps, int64_t labels,
               int64_t stride_b, int64_t stride_l, int dtype, int threads) {
  const char* op = "score_steps";
  threads = check_threads(op, threads);
  const prm::StepsOutputs want = prm::check_steps(
      op, logits, logits_numel, scores, scores_numel, mins, mins_numel, lasts, lasts_numel,
      products, products_numel, means, means_numel, num_steps, num_steps_numel, hidden,
      hidden_numel, step_index, step_index_numel, head, head_numel, bias, bias_numel, batch,
      length, width, steps, labels, stride_b, stride_l);
  const int64_t pairs = batch * steps;  // fits: step_index's check multiplied them
  const int64_t* idx = reinterpret_cast<const int64_t*>(step_index);

  // Re-check every position that will be read, and that each row is a run of steps followed
  // only by padding: positions in [0, L), strictly increasing, -1 after the last step. (With
  // S = 0 nothing is read, and B is bounded by num_steps only when scores are asked for.)
  std::vector<int64_t> count(want.scores ? static_cast<size_t>(batch) : 0, 0);
  for (int64_t b = 0; steps > 0 && b < batch; ++b) {
    int64_t n = 0;
    for (int64_t s = 0; s < steps; ++s) {
      const int64_t p = idx[b * steps + s];
      if (p == -1) continue;
      PONDER_CHECK(p >= 0 && p < length, op << ": step_index[" << b << ", " << s << "] = " << p
                                            << " is outside [0, L = " << length << ")");
      PONDER_CHECK(n == s, op << ": step_index[" << b << ", " << s
                              << "] is a step after -1 padding");
      PONDER_CHECK(s == 0 || p > idx[b * steps + s - 1],
                   op << ": step positions must strictly increase, at step_index[" << b << ", "
                      << s << "]");
      ++n;
    }
    if (want.scores) count[b] = n;
  }

  dispatch_dtype(dtype, op, [&](auto tag) {
    using T = decltype(tag);
    using Acc = acc_t<T>;
    const T* h = reinterpret_cast<const T*>(hidden);
    const Acc* w = reinterpret_cast<const Acc*>(head);
    const Acc* bs = reinterpret_cast<const Acc*>(bias);
    Acc* lo = reinterpret_cast<Acc*>(logits);
    Acc* sc = reinterpret_cast<Acc*>(scores);
    const Acc b0 = bs ? bs[0] : Acc(0);
    const Acc b1 = (bs && labels == 2) ? bs[1] : Acc(0);
    // (In double: the product of three checked sizes may not fit in int64.)
    const int nt = double(pairs) * double(width * labels) < kParallelMin ? 1 : threads;

#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < pairs; ++i) {
      const int64_t b = i / steps;
      const int64_t p = idx[i];
      if (p < 0) {  // padding: logits 0, score NaN
        if (want.logits)
          for (int64_t k = 0; k < labels; ++k) lo[i * labels + k] = Acc(0);
        if (want.scores) sc[i] = Acc(NAN);
        continue;
      }
      const T* row = h + b * stride_b + p * stride_l;
      Acc z0, z1 = Acc(0);
      if (labels == 2) {
        dot2(row, w, w + width, width, &z0, &z1);
        z0 += b0;
        z1 += b1;
      } else {
        z0 = dot(row, w, width) + b0;
      }
      if (want.logits) {
        lo[i * labels] = z0;
        if (labels == 2) lo[i * labels + 1] = z1;
      }
      if (want.scores) sc[i] = prm::sigmoid<Acc>(labels == 2 ? z0 - z1 : z0);
    }

    if (!want.scores) return;
    Acc* mn = reinterpret_cast<Acc*>(mins);
    Acc* la = reinterpret_cast<Acc*>(lasts);
    Acc* pr = reinterpret_cast<Acc*>(products);
    Acc* me = reinterpret_cast<Acc*>(means);
    int64_t* ns = reinterpret_cast<int64_t*>(num_steps);
    // Per row, in step order (the product's rounding then matches a left-to-right product).
    for (int64_t b = 0; b < batch; ++b) {
      prm::RowAggregate<Acc> agg;
      for (int64_t s = 0; s < count[b]; ++s) agg.add(sc[b * steps + s]);
      mn[b] = agg.min_or_nan();
      la[b] = agg.last;
      pr[b] = agg.product_or_nan();
      me[b] = agg.mean();
      ns[b] = agg.count;
    }
  });
}

}  // namespace ponder::cpu::PONDER_CPU_ISA
