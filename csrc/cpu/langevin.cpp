// CPU launchers for ponder.ops.langevin: validate -> dispatch dtype -> OpenMP over chunks of
// elements (or over chains for mala_accept) -> the shared per-element math of
// ponder/langevin.h. Each launcher reads its inputs and writes its outputs once.
#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <type_traits>

#include "cpu/kernel.h"
#include "ponder/langevin.h"
#include "cpu/normals.h"
#include "ponder/random.h"

namespace ponder::cpu::PONDER_CPU_ISA {
namespace {

// Elements per task. A multiple of 4, so every chunk starts on a Philox block and the numbers
// drawn never depend on how the work is split among threads.
constexpr int64_t kChunk = 2048;
// Below this many elements the OpenMP fork costs more than it saves.
constexpr int64_t kParallelMin = 1 << 15;

template <class Body>
void for_each_chunk(int64_t n, int threads, Body body) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const int nt = n < kParallelMin ? 1 : threads;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const int64_t begin = chunk * kChunk;
    body(begin, std::min(kChunk, n - begin));
  }
}

// xi[0, count) = the normals of elements [begin, begin + count) of stream `stream`: from the
// explicit noise buffer when one is given, else from the counter-based generator, which
// prefetches the elements' rows of the inputs in `rows` (the base pointers of arrays of T) while
// it computes (cpu/normals.h).
template <class T, class Acc>
void load_or_draw(Acc* xi, const T* noise, int64_t begin, int64_t count, uint32_t stream,
                  uint64_t seed, std::initializer_list<const T*> rows = {}, T* out = nullptr) {
  if (noise != nullptr) {
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) xi[i] = load(noise[begin + i]);
    return;
  }
  const int64_t blocks = (count + 3) / 4;  // xi has room for whole blocks
  const uint64_t first = static_cast<uint64_t>(begin) / 4;
  if constexpr (std::is_same_v<Acc, float> && kWide > 0) {
    Prefetch ahead;
    int r = 0;
    for (const T* row : rows) {
      if (r < 3) ahead.p[r++] = row + begin;
    }
    if (out != nullptr) ahead.w = out + begin;
    ahead.bytes = count * static_cast<int64_t>(sizeof(T));
    normals_f32(xi, blocks, first, stream, seed, ahead);
    return;
  }
#pragma omp simd
  for (int64_t b = 0; b < blocks; ++b) {
    const random::Normal4<Acc> four = random::normal4<Acc>(first + b, stream, seed);
    xi[4 * b] = four.n0;
    xi[4 * b + 1] = four.n1;
    xi[4 * b + 2] = four.n2;
    xi[4 * b + 3] = four.n3;
  }
}

// step(k, xi) for every element k, with xi its standard normal of stream kStreamMain (from
// `noise` when given): the loop of ula_step and proximal_step. `step` is inlined, so the inner
// loop vectorises as if written out.
template <class Acc, class T, class Step>
void for_each_with_normal(int64_t n, int threads, const T* noise, uint64_t seed,
                          std::initializer_list<const T*> rows, T* out, Step step) {
  for_each_chunk(n, threads, [&](int64_t begin, int64_t count) {
    Acc xi[kChunk];
    load_or_draw(xi, noise, begin, count, langevin::kStreamMain, seed, rows, out);
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) step(begin + i, xi[i]);
  });
}

}  // namespace

void ula_step(uintptr_t out, int64_t out_numel, uintptr_t x, int64_t x_numel,
              uintptr_t grad_logp, int64_t grad_logp_numel, uintptr_t noise,
              int64_t noise_numel, int64_t n, int dtype, double drift, double noise_scale,
              uint64_t seed, int threads) {
  const char* op = "ula_step";
  threads = check_threads(op, threads);
  langevin::check_ula_step(op, out, out_numel, x, x_numel, grad_logp, grad_logp_numel, noise,
                           noise_numel, n);
  dispatch_dtype(dtype, op, [&](auto tag) {
    using T = decltype(tag);
    using Acc = acc_t<T>;
    T* o = reinterpret_cast<T*>(out);
    const T* xp = reinterpret_cast<const T*>(x);
    const T* gp = reinterpret_cast<const T*>(grad_logp);
    const T* np = reinterpret_cast<const T*>(noise);
    const langevin::UlaCoef<Acc> c{Acc(drift), Acc(noise_scale)};
    for_each_with_normal<Acc>(n, threads, np, seed, {xp, gp}, o, [&](int64_t k, Acc xi) {
      store(o[k], langevin::ula_step(c, load(xp[k]), load(gp[k]), xi));
    });
  });
}

void proximal_step(uintptr_t out, int64_t out_numel, uintptr_t z, int64_t z_numel, uintptr_t y,
                   int64_t y_numel, uintptr_t grad_logp, int64_t grad_logp_numel,
                   uintptr_t noise, int64_t noise_numel, int64_t n, int dtype, double keep,
                   double pull, double drift, double noise_scale, uint64_t seed, int threads) {
  const char* op = "proximal_step";
  threads = check_threads(op, threads);
  langevin::check_proximal_step(op, out, out_numel, z, z_numel, y, y_numel, grad_logp,
                                grad_logp_numel, noise, noise_numel, n);
  dispatch_dtype(dtype, op, [&](auto tag) {
    using T = decltype(tag);
    using Acc = acc_t<T>;
    T* o = reinterpret_cast<T*>(out);
    const T* zp = reinterpret_cast<const T*>(z);
    const T* yp = reinterpret_cast<const T*>(y);
    const T* gp = reinterpret_cast<const T*>(grad_logp);
    const T* np = reinterpret_cast<const T*>(noise);
    const langevin::ProximalCoef<Acc> c{Acc(keep), Acc(pull), Acc(drift), Acc(noise_scale)};
    for_each_with_normal<Acc>(n, threads, np, seed, {zp, yp, gp}, o,
                              [&](int64_t k, Acc xi) {
      store(o[k], langevin::proximal_step(c, load(zp[k]), load(yp[k]), load(gp[k]), xi));
    });
  });
}

void uld_step(uintptr_t x_out, int64_t x_out_numel, uintptr_t v_out, int64_t v_out_numel,
              uintptr_t x, int64_t x_numel, uintptr_t v, int64_t v_numel, uintptr_t grad_logp,
              int64_t grad_logp_numel, uintptr_t noise, int64_t noise_numel, int64_t n,
              int dtype, double a, double b, double e, double sv, double sxv, double sx,
              uint64_t seed, int threads) {
  const char* op = "uld_step";
  threads = check_threads(op, threads);
  langevin::check_uld_step(op, x_out, x_out_numel, v_out, v_out_numel, x, x_numel, v, v_numel,
                           grad_logp, grad_logp_numel, noise, noise_numel, n);
  dispatch_dtype(dtype, op, [&](auto tag) {
    using T = decltype(tag);
    using Acc = acc_t<T>;
    T* xo = reinterpret_cast<T*>(x_out);
    T* vo = reinterpret_cast<T*>(v_out);
    const T* xp = reinterpret_cast<const T*>(x);
    const T* vp = reinterpret_cast<const T*>(v);
    const T* gp = reinterpret_cast<const T*>(grad_logp);
    const T* noise_v = reinterpret_cast<const T*>(noise);
    const T* noise_x = noise_v == nullptr ? nullptr : noise_v + n;
    const langevin::UldCoef<Acc> c{Acc(a), Acc(b), Acc(e), Acc(sv), Acc(sxv), Acc(sx)};
    for_each_chunk(n, threads, [&](int64_t begin, int64_t count) {
      Acc nv[kChunk], nx[kChunk];
      // Each draw prefetches part of the rows the step reads.
      load_or_draw(nv, noise_v, begin, count, langevin::kStreamMain, seed, {xp, vp}, xo);
      load_or_draw(nx, noise_x, begin, count, langevin::kStreamSecond, seed, {gp}, vo);
#pragma omp simd
      for (int64_t i = 0; i < count; ++i) {
        const int64_t k = begin + i;
        Acc x_new, v_new;
        langevin::uld_step(c, load(xp[k]), load(vp[k]), load(gp[k]), nv[i], nx[i], x_new, v_new);
        store(xo[k], x_new);
        store(vo[k], v_new);
      }
    });
  });
}

void mala_accept(uintptr_t x_out, int64_t x_out_numel, uintptr_t logp_out, int64_t logp_out_numel,
                 uintptr_t grad_out, int64_t grad_out_numel, uintptr_t accepted,
                 int64_t accepted_numel, uintptr_t x, int64_t x_numel, uintptr_t logp,
                 int64_t logp_numel, uintptr_t grad_logp, int64_t grad_logp_numel,
                 uintptr_t x_prop, int64_t x_prop_numel, uintptr_t logp_prop,
                 int64_t logp_prop_numel, uintptr_t grad_logp_prop, int64_t grad_logp_prop_numel,
                 uintptr_t uniforms, int64_t uniforms_numel, int64_t chains, int64_t dim,
                 int dtype, double step_size, uint64_t seed, int threads) {
  const char* op = "mala_accept";
  threads = check_threads(op, threads);
  langevin::check_mala_accept(
      op, x_out, x_out_numel, logp_out, logp_out_numel, grad_out, grad_out_numel, accepted,
      accepted_numel, x, x_numel, logp, logp_numel, grad_logp, grad_logp_numel, x_prop,
      x_prop_numel, logp_prop, logp_prop_numel, grad_logp_prop, grad_logp_prop_numel, uniforms,
      uniforms_numel, chains, dim);
  const int64_t n = chains * dim;  // fits: x's check multiplied them
  dispatch_dtype(dtype, op, [&](auto tag) {
    using T = decltype(tag);
    using Acc = acc_t<T>;
    T* xo = reinterpret_cast<T*>(x_out);
    T* go = reinterpret_cast<T*>(grad_out);
    double* lo = reinterpret_cast<double*>(logp_out);
    bool* acc = reinterpret_cast<bool*>(accepted);
    const T* x0 = reinterpret_cast<const T*>(x);
    const T* g0 = reinterpret_cast<const T*>(grad_logp);
    const T* x1 = reinterpret_cast<const T*>(x_prop);
    const T* g1 = reinterpret_cast<const T*>(grad_logp_prop);
    const double* l0 = reinterpret_cast<const double*>(logp);
    const double* l1 = reinterpret_cast<const double*>(logp_prop);
    const double* u = reinterpret_cast<const double*>(uniforms);
    const Acc h = Acc(step_size);
    const int nt = n < kParallelMin ? 1 : threads;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t c = 0; c < chains; ++c) {
      const int64_t row = c * dim;
      // Sum in double: the test compares log u with a difference of large numbers.
      double ratio = 0.0;
#pragma omp simd reduction(+ : ratio)
      for (int64_t j = 0; j < dim; ++j) {
        ratio += static_cast<double>(langevin::mala_log_ratio_term(
            h, load(x0[row + j]), load(g0[row + j]), load(x1[row + j]), load(g1[row + j])));
      }
      const double log_alpha = l1[c] - l0[c] + ratio;
      const double uc = u != nullptr ? u[c] : random::uniform_at(c, langevin::kStreamAccept, seed);
      // A NaN log alpha (e.g. a NaN log-density at the proposal) compares false: rejected.
      const bool take = std::log(uc) < log_alpha;
      acc[c] = take;
      lo[c] = take ? l1[c] : l0[c];
      const T* xs = take ? x1 : x0;
      const T* gs = take ? g1 : g0;
      std::copy(xs + row, xs + row + dim, xo + row);
      std::copy(gs + row, gs + row + dim, go + row);
    }
  });
}

}  // namespace ponder::cpu::PONDER_CPU_ISA
