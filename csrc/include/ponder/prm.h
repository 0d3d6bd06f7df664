// PRM step scoring: the per-step and per-row math shared by the CPU launcher (and any CUDA one).
// A step's score is a sigmoid of a logit computed from the hidden row at the step position:
// two labels -> sigmoid(z+ - z-) (the positive softmax probability), value head -> sigmoid(z).
#pragma once

#include <cmath>
#include <cstdint>

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

}  // namespace prm
PONDER_NAMESPACE_END
