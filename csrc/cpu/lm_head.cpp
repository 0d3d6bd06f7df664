// CPU launchers for ponder.ops.lm_head's chunk kernels: validate (every buffer's element count
// against the block's shape, before any thread starts) -> dispatch float / double -> OpenMP over
// the block's rows (tokens). The matrix products around them are torch's (BLAS); these fuse the
// softmax statistics, the target gather, the top-k and the gradient of one [rows, cols] block.
//
// Every buffer comes as (address, element count); an absent one is (0, 0).
#include <limits>

#include "cpu/kernel.h"
#include "ponder/lm_head.h"

namespace ponder::cpu::PONDER_CPU_ISA {
namespace {

// Below this many logits per block the OpenMP fork costs more than it saves.
constexpr int64_t kParallelMin = 1 << 14;

// Checks that an optional buffer is absent or holds exactly `want` elements; a required one
// (`required`) must be present.
void check_buffer(const char* op, const char* name, uintptr_t ptr, int64_t numel, int64_t want,
                  bool required) {
  if (ptr == 0) {
    PONDER_CHECK(!required || want == 0, op << ": " << name << " is a null pointer");
    PONDER_CHECK(numel == 0, op << ": " << name << " is null but has " << numel << " elements");
    return;
  }
  PONDER_CHECK(numel == want, op << ": " << name << " has " << numel << " elements, expected "
                                 << want);
}

// rows * cols (or rows * k), refused where the product overflows int64: a wrapped product could
// otherwise match a small element count and send the kernels past a buffer's end.
int64_t elements(const char* op, int64_t rows, int64_t cols) {
  int64_t out = 0;
  PONDER_CHECK(!__builtin_mul_overflow(rows, cols, &out),
               op << ": rows x cols = " << rows << " x " << cols << " overflows int64");
  return out;
}

template <class F>
void dispatch_acc(int dtype, const char* op, F&& f) {
  if (dtype == kFloat32) return f(float{});
  if (dtype == kFloat64) return f(double{});
  PONDER_CHECK(false, op << ": the logits block must be float32 or float64, got dtype code "
                         << dtype);
}

}  // namespace

void lm_head_chunk_forward(uintptr_t z, int64_t z_numel, uintptr_t y, int64_t y_numel,
                           uintptr_t targets, int64_t targets_numel, uintptr_t m,
                           int64_t m_numel, uintptr_t s, int64_t s_numel, uintptr_t s1,
                           int64_t s1_numel, uintptr_t my, int64_t my_numel, uintptr_t sy,
                           int64_t sy_numel, uintptr_t tgt, int64_t tgt_numel,
                           uintptr_t best_vals, int64_t best_vals_numel, uintptr_t best_ids,
                           int64_t best_ids_numel, int64_t rows, int64_t cols, int64_t k,
                           int64_t v0, int dtype, int threads) {
  const char* op = "lm_head_chunk_forward";
  PONDER_CHECK(rows >= 0 && cols >= 1 && k >= 0 && v0 >= 0,
               op << ": need rows >= 0, cols >= 1, k >= 0, v0 >= 0, got " << rows << ", "
                  << cols << ", " << k << ", " << v0);
  threads = check_threads(op, threads);
  check_buffer(op, "z", z, z_numel, elements(op, rows, cols), true);
  check_buffer(op, "m", m, m_numel, rows, true);
  check_buffer(op, "s", s, s_numel, rows, true);
  check_buffer(op, "s1", s1, s1_numel, rows, false);
  const bool has_y = y != 0;
  check_buffer(op, "y", y, y_numel, elements(op, rows, cols), false);
  check_buffer(op, "my", my, my_numel, rows, has_y);
  check_buffer(op, "sy", sy, sy_numel, rows, has_y);
  PONDER_CHECK(has_y || (my == 0 && sy == 0), op << ": my / sy given without a reference block");
  PONDER_CHECK((targets == 0) == (tgt == 0), op << ": targets and tgt go together");
  check_buffer(op, "targets", targets, targets_numel, rows, false);
  check_buffer(op, "tgt", tgt, tgt_numel, rows, false);
  PONDER_CHECK((k > 0) == (best_vals != 0 && best_ids != 0),
               op << ": best_vals and best_ids are needed exactly when k > 0 (k = " << k << ")");
  check_buffer(op, "best_vals", best_vals, best_vals_numel, elements(op, rows, k), false);
  check_buffer(op, "best_ids", best_ids, best_ids_numel, elements(op, rows, k), false);
  if (rows == 0) return;

  dispatch_acc(dtype, op, [&](auto tag) {
    using T = decltype(tag);
    const T* zp = reinterpret_cast<const T*>(z);
    const T* yp = reinterpret_cast<const T*>(y);
    const int64_t* tp = reinterpret_cast<const int64_t*>(targets);
    T* mp = reinterpret_cast<T*>(m);
    T* sp = reinterpret_cast<T*>(s);
    T* s1p = reinterpret_cast<T*>(s1);
    T* myp = reinterpret_cast<T*>(my);
    T* syp = reinterpret_cast<T*>(sy);
    T* tgp = reinterpret_cast<T*>(tgt);
    T* bvp = reinterpret_cast<T*>(best_vals);
    int64_t* bip = reinterpret_cast<int64_t*>(best_ids);
    const int nt = rows * cols < kParallelMin ? 1 : threads;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < rows; ++i) {
      lm_head::RowState<T> st{mp + i,
                              sp + i,
                              s1p ? s1p + i : nullptr,
                              myp ? myp + i : nullptr,
                              syp ? syp + i : nullptr,
                              tgp ? tgp + i : nullptr,
                              bvp ? bvp + i * k : nullptr,
                              bip ? bip + i * k : nullptr};
      lm_head::forward_row<T>(zp + i * cols, yp ? yp + i * cols : nullptr, tp ? tp[i] : -1,
                              cols, v0, k, st);
    }
  });
}

void lm_head_chunk_backward(uintptr_t z, int64_t z_numel, uintptr_t y, int64_t y_numel,
                            uintptr_t lse, int64_t lse_numel, uintptr_t alpha,
                            int64_t alpha_numel, uintptr_t beta, int64_t beta_numel,
                            uintptr_t gamma, int64_t gamma_numel, uintptr_t targets,
                            int64_t targets_numel, uintptr_t delta, int64_t delta_numel,
                            int64_t rows, int64_t cols, int64_t v0, int dtype, int threads) {
  const char* op = "lm_head_chunk_backward";
  PONDER_CHECK(rows >= 0 && cols >= 1 && v0 >= 0,
               op << ": need rows >= 0, cols >= 1, v0 >= 0, got " << rows << ", " << cols
                  << ", " << v0);
  threads = check_threads(op, threads);
  check_buffer(op, "z", z, z_numel, elements(op, rows, cols), true);
  check_buffer(op, "y", y, y_numel, elements(op, rows, cols), false);
  check_buffer(op, "lse", lse, lse_numel, rows, true);
  check_buffer(op, "alpha", alpha, alpha_numel, rows, true);
  check_buffer(op, "beta", beta, beta_numel, rows, false);
  check_buffer(op, "gamma", gamma, gamma_numel, rows, false);
  PONDER_CHECK(gamma == 0 || y != 0, op << ": gamma needs the reference block y");
  PONDER_CHECK((targets == 0) == (delta == 0), op << ": targets and delta go together");
  check_buffer(op, "targets", targets, targets_numel, rows, false);
  check_buffer(op, "delta", delta, delta_numel, rows, false);
  if (rows == 0) return;

  dispatch_acc(dtype, op, [&](auto tag) {
    using T = decltype(tag);
    T* zp = reinterpret_cast<T*>(z);
    const T* yp = reinterpret_cast<const T*>(y);
    const T* lp = reinterpret_cast<const T*>(lse);
    const T* ap = reinterpret_cast<const T*>(alpha);
    const T* bp = reinterpret_cast<const T*>(beta);
    const T* gp = reinterpret_cast<const T*>(gamma);
    const int64_t* tp = reinterpret_cast<const int64_t*>(targets);
    const T* dp = reinterpret_cast<const T*>(delta);
    const int nt = rows * cols < kParallelMin ? 1 : threads;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < rows; ++i) {
      lm_head::backward_row<T>(zp + i * cols, yp ? yp + i * cols : nullptr, lp[i], ap[i],
                               bp ? bp[i] : T(0), gp ? gp[i] : T(0), tp ? tp[i] : -1,
                               dp ? dp[i] : T(0), cols, v0);
    }
  });
}

}  // namespace ponder::cpu::PONDER_CPU_ISA
