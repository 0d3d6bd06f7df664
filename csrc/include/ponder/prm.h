// PRM step scoring: the per-step and per-row math shared by the CPU launcher (and any CUDA one).
// A step's score is a sigmoid of a logit computed from the hidden row at the step position:
// two labels -> sigmoid(z+ - z-) (the positive softmax probability), value head -> sigmoid(z).
#pragma once

#include <cmath>
#include <cstdint>

#include "ponder/check.h"
#include "ponder/common.h"

PONDER_NAMESPACE_BEGIN
namespace prm {

// Logistic function without overflow: exp of a non-positive argument only.
template <class Acc>
PONDER_HD Acc sigmoid(Acc z) {
  if (z >= Acc(0)) return Acc(1) / (Acc(1) + std::exp(-z));
  const Acc e = std::exp(z);
  return e / (Acc(1) + e);
}

// Running min / last / product / sum of one row's step scores, in step order. A row with no
// steps reports NaN for all four aggregates (ponder/ops/prm.py documents why). A NaN score makes
// every aggregate that reads it NaN, as in the reference (torch.amin propagates NaN): a solution
// with an unscorable step must not win a best-of-N by min.
template <class Acc>
struct RowAggregate {
  Acc min = Acc(INFINITY);
  Acc last = Acc(NAN);
  Acc product = Acc(1);
  Acc sum = Acc(0);
  int64_t count = 0;

  PONDER_HD void add(Acc s) {
    min = (s < min || s != s) ? s : min;  // once NaN, stays NaN (NaN < x is false)
    last = s;
    product *= s;
    sum += s;
    ++count;
  }
  PONDER_HD Acc mean() const { return count > 0 ? sum / Acc(count) : Acc(NAN); }
  PONDER_HD Acc min_or_nan() const { return count > 0 ? min : Acc(NAN); }
  PONDER_HD Acc product_or_nan() const { return count > 0 ? product : Acc(NAN); }
};

// ---- The launchers' argument checks (host only) ----
// The CPU launcher (cpu/prm.cpp) and the CUDA one (cuda/prm.cu) run the same checks with the
// same messages: the arguments are the launchers' own, in their order. Then the CPU re-reads the
// step positions and CUDA checks its launch limits.

// The outputs a prm_steps call asks for.
struct StepsOutputs {
  bool logits;  // the per-step logits
  bool scores;  // the per-step scores and the row aggregates
};

inline StepsOutputs check_steps(const char* op, uintptr_t logits, int64_t logits_numel,
                                uintptr_t scores, int64_t scores_numel, uintptr_t mins,
                                int64_t mins_numel, uintptr_t lasts, int64_t lasts_numel,
                                uintptr_t products, int64_t products_numel, uintptr_t means,
                                int64_t means_numel, uintptr_t num_steps, int64_t num_steps_numel,
                                uintptr_t hidden, int64_t hidden_numel, uintptr_t step_index,
                                int64_t step_index_numel, uintptr_t head, int64_t head_numel,
                                uintptr_t bias, int64_t bias_numel, int64_t batch, int64_t length,
                                int64_t width, int64_t steps, int64_t labels, int64_t stride_b,
                                int64_t stride_l) {
  PONDER_CHECK(labels == 1 || labels == 2, op << ": head must have 1 or 2 rows, got " << labels);
  // Scores are asked for through num_steps ([B]: never null for B > 0), since scores [B, S]
  // is an empty buffer (maybe null) when S = 0. A buffer is absent when it is (0, 0).
  const StepsOutputs want{logits != 0 || logits_numel != 0, num_steps != 0 || num_steps_numel != 0};
  PONDER_CHECK(want.logits || want.scores, op << ": no output requested");
  check_optional_buffer(op, {"logits", logits, logits_numel}, {batch, steps, labels});
  if (want.scores) {
    check_buffer(op, {"scores", scores, scores_numel}, {batch, steps});
    check_buffer(op, {"mins", mins, mins_numel}, {batch});
    check_buffer(op, {"lasts", lasts, lasts_numel}, {batch});
    check_buffer(op, {"products", products, products_numel}, {batch});
    check_buffer(op, {"means", means, means_numel}, {batch});
    check_buffer(op, {"num_steps", num_steps, num_steps_numel}, {batch});
  }
  check_buffer(op, {"hidden", hidden, hidden_numel}, {batch, length, width},
               {stride_b, stride_l, 1});
  check_buffer(op, {"step_index", step_index, step_index_numel}, {batch, steps});
  check_buffer(op, {"head", head, head_numel}, {labels, width});
  check_optional_buffer(op, {"bias", bias, bias_numel}, {labels});
  return want;
}

}  // namespace prm
PONDER_NAMESPACE_END
