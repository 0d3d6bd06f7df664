// CUDA launcher for ponder.ops.prm (score_steps / step_logits), in the order of cuda/common.cuh:
// validate, then launch(). One warp per (row, step) pair reads the hidden row at the step
// position once and dots it with the 1 or 2 head rows (accumulating in acc_t: float, double for
// fp64); a second kernel walks each row's scores in step order for the aggregates, with the
// RowAggregate of ponder/prm.h that the CPU launcher uses. Only the B x S step rows are read.
//
// Unlike the CPU launcher, this one cannot re-check the step positions (they are on the device;
// reading them here would synchronise): Python checks them before the call (ops/prm.py), and the
// kernel reads a row only at a position in [0, L): any other entry than -1 gives NaN logits and
// a NaN score, never an out-of-bounds read.
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/ops.h"
#include "ponder/prm.h"

namespace ponder {
namespace cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

template <class T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
prm_steps_kernel(acc_t<T>* __restrict__ logits, acc_t<T>* __restrict__ scores,
                 const T* __restrict__ hidden, const int64_t* __restrict__ step_index,
                 const acc_t<T>* __restrict__ head, const acc_t<T>* __restrict__ bias,
                 int64_t pairs, int64_t steps, int64_t length, int64_t width, int labels,
                 int64_t stride_b, int64_t stride_l) {
  using Acc = acc_t<T>;
  const int64_t i = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (i >= pairs) return;  // whole warps leave together
  const int64_t b = i / steps;
  const int64_t p = step_index[i];
  if (p < 0 || p >= length) {
    if (lane == 0) {
      // -1 is padding (logits 0, score NaN); anything else outside [0, L) is not a position.
      const Acc z = p == -1 ? Acc(0) : Acc(NAN);
      if (logits != nullptr) {
        for (int k = 0; k < labels; ++k) logits[i * labels + k] = z;
      }
      if (scores != nullptr) scores[i] = Acc(NAN);
    }
    return;
  }
  const T* row = hidden + b * stride_b + p * stride_l;
  Acc z0 = Acc(0), z1 = Acc(0);
  for (int64_t c = lane; c < width; c += 32) {
    const Acc x = Acc(load(row[c]));
    z0 += x * head[c];
    if (labels == 2) z1 += x * head[width + c];
  }
  for (int off = 16; off > 0; off /= 2) {
    z0 += __shfl_xor_sync(0xffffffffu, z0, off);
    z1 += __shfl_xor_sync(0xffffffffu, z1, off);
  }
  if (lane != 0) return;
  if (bias != nullptr) {
    z0 += bias[0];
    if (labels == 2) z1 += bias[1];
  }
  if (logits != nullptr) {
    logits[i * labels] = z0;
    if (labels == 2) logits[i * labels + 1] = z1;
  }
  if (scores != nullptr) scores[i] = prm::sigmoid<Acc>(labels == 2 ? z0 - z1 : z0);
}

// One thread per row: the row's steps are its entries before the first -1, in step order (the
// product's rounding then matches a left-to-right product, as on the CPU).
template <class Acc>
__global__ void prm_aggregate_kernel(const Acc* __restrict__ scores,
                                     const int64_t* __restrict__ step_index, int64_t batch,
                                     int64_t steps, Acc* __restrict__ mins,
                                     Acc* __restrict__ lasts, Acc* __restrict__ products,
                                     Acc* __restrict__ means, int64_t* __restrict__ num_steps) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  prm::RowAggregate<Acc> agg;
  for (int64_t s = 0; s < steps && step_index[b * steps + s] != -1; ++s) {
    agg.add(scores[b * steps + s]);
  }
  mins[b] = agg.min_or_nan();
  lasts[b] = agg.last;
  products[b] = agg.product_or_nan();
  means[b] = agg.mean();
  num_steps[b] = agg.count;
}

}  // namespace

void prm_steps(uintptr_t logits, int64_t logits_numel, uintptr_t scores, int64_t scores_numel,
               uintptr_t mins, int64_t mins_numel, uintptr_t lasts, int64_t lasts_numel,
               uintptr_t products, int64_t products_numel, uintptr_t means, int64_t means_numel,
               uintptr_t num_steps, int64_t num_steps_numel, uintptr_t hidden,
               int64_t hidden_numel, uintptr_t step_index, int64_t step_index_numel,
               uintptr_t head, int64_t head_numel, uintptr_t bias, int64_t bias_numel,
               int64_t batch, int64_t length, int64_t width, int64_t steps, int64_t labels,
               int64_t stride_b, int64_t stride_l, int dtype, int device, uintptr_t stream) {
  const char* op = "score_steps";
  const prm::StepsOutputs want = prm::check_steps(
      op, logits, logits_numel, scores, scores_numel, mins, mins_numel, lasts, lasts_numel,
      products, products_numel, means, means_numel, num_steps, num_steps_numel, hidden,
      hidden_numel, step_index, step_index_numel, head, head_numel, bias, bias_numel, batch,
      length, width, steps, labels, stride_b, stride_l);
  const int64_t pairs = batch * steps;  // fits: step_index's check multiplied them
  const int64_t blocks = (pairs + kWarpsPerBlock - 1) / kWarpsPerBlock;
  PONDER_CHECK(blocks < 2147483647 && batch < 2147483647LL * 256,
               op << ": B * S = " << pairs << " pairs exceed one launch");
  // Work: the pairs, and for the aggregates the rows (a row with no step still gets NaNs).
  launch(op, device, stream, dtype, want.scores ? batch : pairs, [&](auto tag, cudaStream_t s) {
    using T = decltype(tag);
    using Acc = acc_t<T>;
    Acc* sc = want.scores ? reinterpret_cast<Acc*>(scores) : nullptr;
    if (pairs > 0) {
      prm_steps_kernel<T><<<static_cast<unsigned>(blocks), kWarpsPerBlock * 32, 0, s>>>(
          want.logits ? reinterpret_cast<Acc*>(logits) : nullptr, sc,
          reinterpret_cast<const T*>(hidden), reinterpret_cast<const int64_t*>(step_index),
          reinterpret_cast<const Acc*>(head), reinterpret_cast<const Acc*>(bias), pairs, steps,
          length, width, static_cast<int>(labels), stride_b, stride_l);
      check_launch(op);
    }
    if (want.scores) {
      prm_aggregate_kernel<Acc><<<static_cast<unsigned>((batch + 255) / 256), 256, 0, s>>>(
          sc, reinterpret_cast<const int64_t*>(step_index), batch, steps,
          reinterpret_cast<Acc*>(mins), reinterpret_cast<Acc*>(lasts),
          reinterpret_cast<Acc*>(products), reinterpret_cast<Acc*>(means),
          reinterpret_cast<int64_t*>(num_steps));
    }
  });
}

}  // namespace cuda
}  // namespace ponder
