// CUDA launchers for ponder.ops.langevin, in the order of cuda/common.cuh: validate, then
// launch() (device guard -> torch's stream -> dispatch the dtype -> check the error). The
// per-element math and the random numbers come from the headers the CPU launchers use.
#include "cuda/common.cuh"
#include "cuda/ops.h"
#include "ponder/langevin.h"
#include "ponder/random.h"

namespace ponder {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// Each thread owns groups of 4 consecutive elements: one Philox block of normals.
int64_t grid_for(int64_t n) {
  const int64_t groups = (n + 3) / 4;
  const int64_t blocks = (groups + kThreads - 1) / kThreads;
  return blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535;
}

template <class T, class Acc>
__device__ __forceinline__ void draw4(const T* noise, int64_t k0, int64_t n, uint32_t stream,
                                      uint64_t seed, Acc xi[4]) {
  if (noise != nullptr) {
#pragma unroll
    for (int j = 0; j < 4; ++j) xi[j] = k0 + j < n ? Acc(load(noise[k0 + j])) : Acc(0);
  } else {
    const random::Normal4<Acc> four = random::normal4<Acc>(static_cast<uint64_t>(k0) / 4, stream,
                                                           seed);
    xi[0] = four.n0;
    xi[1] = four.n1;
    xi[2] = four.n2;
    xi[3] = four.n3;
  }
}

#define PONDER_GROUP_LOOP(n)                                                        \
  for (int64_t grp = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; grp * 4 < (n); \
       grp += int64_t(gridDim.x) * blockDim.x)

// step(k, xi) for every element k, with xi its standard normal of stream kStreamMain (from
// `noise` when given): the loop of ula_step and proximal_step.
template <class Acc, class T, class Step>
__device__ __forceinline__ void for_each_with_normal(int64_t n, const T* noise, uint64_t seed,
                                                     Step step) {
  PONDER_GROUP_LOOP(n) {
    const int64_t k0 = grp * 4;
    Acc xi[4];
    draw4(noise, k0, n, langevin::kStreamMain, seed, xi);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (k0 + j < n) step(k0 + j, xi[j]);
    }
  }
}

template <class T>
__global__ void ula_step_kernel(T* out, const T* x, const T* g, const T* noise, int64_t n,
                                langevin::UlaCoef<acc_t<T>> c, uint64_t seed) {
  using Acc = acc_t<T>;
  for_each_with_normal<Acc>(n, noise, seed, [&](int64_t k, Acc xi) {
    store(out[k], langevin::ula_step(c, Acc(load(x[k])), Acc(load(g[k])), xi));
  });
}

template <class T>
__global__ void proximal_step_kernel(T* out, const T* z, const T* y, const T* g, const T* noise,
                                     int64_t n, langevin::ProximalCoef<acc_t<T>> c,
                                     uint64_t seed) {
  using Acc = acc_t<T>;
  for_each_with_normal<Acc>(n, noise, seed, [&](int64_t k, Acc xi) {
    store(out[k], langevin::proximal_step(c, Acc(load(z[k])), Acc(load(y[k])), Acc(load(g[k])),
                                          xi));
  });
}

template <class T>
__global__ void uld_step_kernel(T* x_out, T* v_out, const T* x, const T* v, const T* g,
                                const T* noise, int64_t n, langevin::UldCoef<acc_t<T>> c,
                                uint64_t seed) {
  using Acc = acc_t<T>;
  const T* noise_x = noise == nullptr ? nullptr : noise + n;
  PONDER_GROUP_LOOP(n) {
    const int64_t k0 = grp * 4;
    Acc nv[4], nx[4];
    draw4(noise, k0, n, langevin::kStreamMain, seed, nv);
    draw4(noise_x, k0, n, langevin::kStreamSecond, seed, nx);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t k = k0 + j;
      if (k < n) {
        Acc xn, vn;
        langevin::uld_step(c, Acc(load(x[k])), Acc(load(v[k])), Acc(load(g[k])), nv[j], nx[j],
                           xn, vn);
        store(x_out[k], xn);
        store(v_out[k], vn);
      }
    }
  }
}

// One block per chain: a block-wide double reduction of the proposal term, then the block
// copies the selected row.
template <class T>
__global__ void mala_accept_kernel(T* x_out, double* logp_out, T* g_out, bool* accepted,
                                   const T* x0, const double* l0, const T* g0, const T* x1,
                                   const double* l1, const T* g1, const double* uniforms,
                                   int64_t dim, acc_t<T> h, uint64_t seed) {
  using Acc = acc_t<T>;
  __shared__ double partial[kThreads];
  __shared__ bool take_shared;
  const int64_t c = blockIdx.x;
  const int64_t row = c * dim;
  double sum = 0.0;
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
    sum += static_cast<double>(langevin::mala_log_ratio_term(
        h, Acc(load(x0[row + j])), Acc(load(g0[row + j])), Acc(load(x1[row + j])),
        Acc(load(g1[row + j]))));
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const double log_alpha = l1[c] - l0[c] + partial[0];
    const double u = uniforms != nullptr ? uniforms[c]
                                         : random::uniform_at(c, langevin::kStreamAccept, seed);
    const bool take = log(u) < log_alpha;  // NaN log alpha: rejected
    take_shared = take;
    accepted[c] = take;
    logp_out[c] = take ? l1[c] : l0[c];
  }
  __syncthreads();
  const T* xs = take_shared ? x1 : x0;
  const T* gs = take_shared ? g1 : g0;
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
    x_out[row + j] = xs[row + j];
    g_out[row + j] = gs[row + j];
  }
}

}  // namespace

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device / no driver" error
    return 0;
  }
  return count;
}

void ula_step(uintptr_t out, int64_t out_numel, uintptr_t x, int64_t x_numel,
              uintptr_t grad_logp, int64_t grad_logp_numel, uintptr_t noise,
              int64_t noise_numel, int64_t n, int dtype, double drift, double noise_scale,
              uint64_t seed, int device, uintptr_t stream) {
  const char* op = "ula_step";
  langevin::check_ula_step(op, out, out_numel, x, x_numel, grad_logp, grad_logp_numel, noise,
                           noise_numel, n);
  launch(op, device, stream, dtype, n, [&](auto tag, cudaStream_t s) {
    using T = decltype(tag);
    using Acc = acc_t<T>;
    ula_step_kernel<T><<<grid_for(n), kThreads, 0, s>>>(
        reinterpret_cast<T*>(out), reinterpret_cast<const T*>(x),
        reinterpret_cast<const T*>(grad_logp), reinterpret_cast<const T*>(noise), n,
        langevin::UlaCoef<Acc>{Acc(drift), Acc(noise_scale)}, seed);
  });
}

void proximal_step(uintptr_t out, int64_t out_numel, uintptr_t z, int64_t z_numel, uintptr_t y,
                   int64_t y_numel, uintptr_t grad_logp, int64_t grad_logp_numel,
                   uintptr_t noise, int64_t noise_numel, int64_t n, int dtype, double keep,
                   double pull, double drift, double noise_scale, uint64_t seed, int device,
                   uintptr_t stream) {
  const char* op = "proximal_step";
  langevin::check_proximal_step(op, out, out_numel, z, z_numel, y, y_numel, grad_logp,
                                grad_logp_numel, noise, noise_numel, n);
  launch(op, device, stream, dtype, n, [&](auto tag, cudaStream_t s) {
    using T = decltype(tag);
    using Acc = acc_t<T>;
    proximal_step_kernel<T><<<grid_for(n), kThreads, 0, s>>>(
        reinterpret_cast<T*>(out), reinterpret_cast<const T*>(z), reinterpret_cast<const T*>(y),
        reinterpret_cast<const T*>(grad_logp), reinterpret_cast<const T*>(noise), n,
        langevin::ProximalCoef<Acc>{Acc(keep), Acc(pull), Acc(drift), Acc(noise_scale)}, seed);
  });
}

void uld_step(uintptr_t x_out, int64_t x_out_numel, uintptr_t v_out, int64_t v_out_numel,
              uintptr_t x, int64_t x_numel, uintptr_t v, int64_t v_numel, uintptr_t grad_logp,
              int64_t grad_logp_numel, uintptr_t noise, int64_t noise_numel, int64_t n,
              int dtype, double a, double b, double e, double sv, double sxv, double sx,
              uint64_t seed, int device, uintptr_t stream) {
  const char* op = "uld_step";
  langevin::check_uld_step(op, x_out, x_out_numel, v_out, v_out_numel, x, x_numel, v, v_numel,
                           grad_logp, grad_logp_numel, noise, noise_numel, n);
  launch(op, device, stream, dtype, n, [&](auto tag, cudaStream_t s) {
    using T = decltype(tag);
    using Acc = acc_t<T>;
    uld_step_kernel<T><<<grid_for(n), kThreads, 0, s>>>(
        reinterpret_cast<T*>(x_out), reinterpret_cast<T*>(v_out), reinterpret_cast<const T*>(x),
        reinterpret_cast<const T*>(v), reinterpret_cast<const T*>(grad_logp),
        reinterpret_cast<const T*>(noise), n,
        langevin::UldCoef<Acc>{Acc(a), Acc(b), Acc(e), Acc(sv), Acc(sxv), Acc(sx)}, seed);
  });
}

void mala_accept(uintptr_t x_out, int64_t x_out_numel, uintptr_t logp_out, int64_t logp_out_numel,
                 uintptr_t grad_out, int64_t grad_out_numel, uintptr_t accepted,
                 int64_t accepted_numel, uintptr_t x, int64_t x_numel, uintptr_t logp,
                 int64_t logp_numel, uintptr_t grad_logp, int64_t grad_logp_numel,
                 uintptr_t x_prop, int64_t x_prop_numel, uintptr_t logp_prop,
                 int64_t logp_prop_numel, uintptr_t grad_logp_prop, int64_t grad_logp_prop_numel,
                 uintptr_t uniforms, int64_t uniforms_numel, int64_t chains, int64_t dim,
                 int dtype, double step_size, uint64_t seed, int device, uintptr_t stream) {
  const char* op = "mala_accept";
  langevin::check_mala_accept(
      op, x_out, x_out_numel, logp_out, logp_out_numel, grad_out, grad_out_numel, accepted,
      accepted_numel, x, x_numel, logp, logp_numel, grad_logp, grad_logp_numel, x_prop,
      x_prop_numel, logp_prop, logp_prop_numel, grad_logp_prop, grad_logp_prop_numel, uniforms,
      uniforms_numel, chains, dim);
  // One block per chain: the grid's x dimension holds at most 2^31 - 1 blocks.
  PONDER_CHECK(chains < (int64_t(1) << 31), op << ": at most 2^31 - 1 chains, got " << chains);
  launch(op, device, stream, dtype, chains, [&](auto tag, cudaStream_t s) {
    using T = decltype(tag);
    using Acc = acc_t<T>;
    mala_accept_kernel<T><<<static_cast<unsigned>(chains), kThreads, 0, s>>>(
        reinterpret_cast<T*>(x_out), reinterpret_cast<double*>(logp_out),
        reinterpret_cast<T*>(grad_out), reinterpret_cast<bool*>(accepted),
        reinterpret_cast<const T*>(x), reinterpret_cast<const double*>(logp),
        reinterpret_cast<const T*>(grad_logp), reinterpret_cast<const T*>(x_prop),
        reinterpret_cast<const double*>(logp_prop), reinterpret_cast<const T*>(grad_logp_prop),
        reinterpret_cast<const double*>(uniforms), dim, Acc(step_size), seed);
  });
}

}  // namespace cuda
}  // namespace ponder
