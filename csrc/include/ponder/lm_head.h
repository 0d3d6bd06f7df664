// Framework-free math of ponder.ops.lm_head's chunk kernels: one token's row of a block of logits
// folded into that token's running statistics (an online log-sum-exp with its weighted sums and a
// running top-k), and the row's gradient. Shared by the CPU launchers and any CUDA port.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "ponder/common.h"
#include "ponder/speculative.h"

PONDER_NAMESPACE_BEGIN
namespace lm_head {

// exp(x) for x <= 0 (and slightly above: rounding of z - lse): the branch-free polynomial in
// float, so the loops over a row vectorise; std::exp in double.
PONDER_HD float exp_small(float x) { return speculative::exp_nonpos_f32(x); }
PONDER_HD double exp_small(double x) { return std::exp(x); }

// The running statistics of one token (pointers to its entries; any may be null but m and s).
template <class T>
struct RowState {
  T* m;      // running max of z
  T* s;      // sum exp(z - m)
  T* s1;     // sum exp(z - m) * u, u = z - y with a reference block, else z (null: not wanted)
  T* my;     // running max of y (reference block)
  T* sy;     // sum exp(y - my)
  T* tgt;    // the target's logit, written when the target lies in this block
  T* best_vals;         // [k] running top-k values, descending
  int64_t* best_ids;    // [k] their vocabulary ids; ties keep the smaller id first
};

// Online update of (m, s) with the row `x[0..cols)`: returns the factor the old sums are scaled by
// (exp(m_old - m_new)) and stores the new max in *m.
template <class T>
inline T rescale(const T* x, int64_t cols, T* m) {
  T cm = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : cm)
  for (int64_t j = 0; j < cols; ++j) cm = x[j] > cm ? x[j] : cm;
  const T old = *m;
  const T nm = old > cm ? old : cm;
  *m = nm;
  if (nm == -std::numeric_limits<T>::infinity()) return T(1);  // nothing finite yet
  return exp_small(old - nm);  // old = -inf gives 0
}

template <class T>
inline void forward_row(const T* z, const T* y, int64_t target, int64_t cols, int64_t v0,
                        int64_t k, RowState<T> st) {
  const T scale = rescale(z, cols, st.m);
  const T mz = *st.m;
  T se = T(0), s1 = T(0);
  if (st.s1 != nullptr && y != nullptr) {
#pragma omp simd reduction(+ : se, s1)
    for (int64_t j = 0; j < cols; ++j) {
      const T e = exp_small(z[j] - mz);
      se += e;
      s1 += e * (z[j] - y[j]);
    }
  } else if (st.s1 != nullptr) {
#pragma omp simd reduction(+ : se, s1)
    for (int64_t j = 0; j < cols; ++j) {
      const T e = exp_small(z[j] - mz);
      se += e;
      s1 += e * z[j];
    }
  } else {
#pragma omp simd reduction(+ : se)
    for (int64_t j = 0; j < cols; ++j) se += exp_small(z[j] - mz);
  }
  *st.s = *st.s * scale + se;
  if (st.s1 != nullptr) *st.s1 = *st.s1 * scale + s1;
  if (y != nullptr) {
    const T sc = rescale(y, cols, st.my);
    const T my = *st.my;
    T sy = T(0);
#pragma omp simd reduction(+ : sy)
    for (int64_t j = 0; j < cols; ++j) sy += exp_small(y[j] - my);
    *st.sy = *st.sy * sc + sy;
  }
  if (st.tgt != nullptr) {
    const int64_t local = target - v0;
    if (local >= 0 && local < cols) *st.tgt = z[local];
  }
  if (k > 0) {
    // Ids arrive in increasing order, so a value equal to the k-th never enters (strictly
    // greater only) and an inserted value goes after the equal ones: ties keep the smaller id.
    T* bv = st.best_vals;
    int64_t* bi = st.best_ids;
    for (int64_t j = 0; j < cols; ++j) {
      const T v = z[j];
      if (!(v > bv[k - 1])) continue;
      int64_t pos = k - 1;
      while (pos > 0 && bv[pos - 1] < v) {
        bv[pos] = bv[pos - 1];
        bi[pos] = bi[pos - 1];
        --pos;
      }
      bv[pos] = v;
      bi[pos] = v0 + j;
    }
  }
}

// dz_j = exp(z_j - lse) (alpha + beta z_j + gamma y_j), plus delta at the target, in place.
template <class T>
inline void backward_row(T* z, const T* y, T lse, T alpha, T beta, T gamma, int64_t target,
                         T delta, int64_t cols, int64_t v0) {
  if (y != nullptr) {
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j)
      z[j] = exp_small(z[j] - lse) * (alpha + beta * z[j] + gamma * y[j]);
  } else {
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) z[j] = exp_small(z[j] - lse) * (alpha + beta * z[j]);
  }
  const int64_t local = target - v0;
  if (local >= 0 && local < cols) z[local] += delta;
}

}  // namespace lm_head
PONDER_NAMESPACE_END
