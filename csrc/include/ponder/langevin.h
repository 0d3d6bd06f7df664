// Langevin-family sampler steps: the per-element math shared by the CPU launchers
// (csrc/cpu/langevin.cpp) and the CUDA kernels (csrc/cuda/langevin.cu). Gradients are of the
// log-density (grad_logp = -grad f). Coefficients are computed once per call on the host, in
// double, by the Python layer (ponder/ops/langevin.py) and arrive here as plain numbers.
#pragma once

#include "ponder/check.h"
#include "ponder/common.h"

PONDER_NAMESPACE_BEGIN
namespace langevin {

// Random streams: each op draws from (seed, stream). uld_step needs two independent normals per
// element (two streams); mala_accept's uniforms have a stream of their own, so that a user who
// passes the same seed to mala_propose and mala_accept does not get a uniform that is a function
// of the chain's own proposal noise.
constexpr uint32_t kStreamMain = 0;
constexpr uint32_t kStreamSecond = 1;
constexpr uint32_t kStreamAccept = 2;

// ula_step and mala_propose: x + drift * grad_logp + noise_scale * xi
// (drift = h, noise_scale = sqrt(2 h T)).
template <class Acc>
struct UlaCoef {
  Acc drift, noise_scale;
};
template <class Acc>
PONDER_HD Acc ula_step(const UlaCoef<Acc>& c, Acc x, Acc grad_logp, Acc xi) {
  return x + c.drift * grad_logp + c.noise_scale * xi;
}

// proximal_step (the SPS inner step on the restricted Gaussian oracle):
// (1 - tau/eta) z + (tau/eta) y + tau * grad_logp + sqrt(2 tau) xi.
template <class Acc>
struct ProximalCoef {
  Acc keep, pull, drift, noise_scale;  // 1 - tau/eta, tau/eta, tau, sqrt(2 tau)
};
template <class Acc>
PONDER_HD Acc proximal_step(const ProximalCoef<Acc>& c, Acc z, Acc y, Acc grad_logp, Acc xi) {
  return c.keep * z + c.pull * y + c.drift * grad_logp + c.noise_scale * xi;
}

// uld_step: underdamped Langevin with the exact OU integrator and the gradient frozen over the
// step (a = exp(-gamma h)); n_v and n_x are independent standard normals, correlated here.
//   v' = a v + b grad_logp + sv n_v
//   x' = x + b v + e grad_logp + sxv n_v + sx n_x
// with b = (1 - a)/gamma, e = (h - b)/gamma, and (sv, sxv, sx) the Cholesky factor of the joint
// covariance of the (v, x) noise.
template <class Acc>
struct UldCoef {
  Acc a, b, e, sv, sxv, sx;
};
template <class Acc>
PONDER_HD void uld_step(const UldCoef<Acc>& c, Acc x, Acc v, Acc grad_logp, Acc n_v, Acc n_x,
                        Acc& x_new, Acc& v_new) {
  v_new = c.a * v + c.b * grad_logp + c.sv * n_v;
  x_new = x + c.b * v + c.e * grad_logp + c.sxv * n_v + c.sx * n_x;
}

// mala_accept: log alpha = logp' - logp + log q(x | x') - log q(x' | x), with
// log q(a | b) = -|a - b - h grad_logp(b)|^2 / (4 h). By a difference of squares the proposal
// part is a sum over coordinates of the term below, which has no 1/h and so no cancellation
// for small steps.
template <class Acc>
PONDER_HD Acc mala_log_ratio_term(Acc h, Acc x, Acc grad_logp, Acc x_prop, Acc grad_logp_prop) {
  const Acc term = Acc(-0.25) * (grad_logp + grad_logp_prop) *
                   (Acc(2) * (x_prop - x) + h * (grad_logp_prop - grad_logp));
  // An infinite coordinate: the definition (mala_log_alpha_reference) subtracts two infinite
  // squared norms, a NaN log alpha, so the chain stays; the difference of squares is +-inf
  // there instead and could move the chain to an infinite state. The direct form has the
  // definition's NaN / inf pattern. (a - a is 0 exactly for a finite a, NaN otherwise.)
  const Acc probe = (x - x) + (x_prop - x_prop) + (grad_logp - grad_logp) +
                    (grad_logp_prop - grad_logp_prop);
  const Acc r_forward = x_prop - x - h * grad_logp;
  const Acc r_backward = x - x_prop - h * grad_logp_prop;
  const Acc direct = (r_forward * r_forward - r_backward * r_backward) / (Acc(4) * h);
  return probe == Acc(0) ? term : direct;
}

}  // namespace langevin

// ---- The launchers' argument checks (host only) ----
// The CPU launchers (cpu/langevin.cpp) and the CUDA ones (cuda/langevin.cu) run the same checks
// with the same messages: the arguments are the launchers' own, in their order.
namespace langevin {

// out, x, grad_logp, noise (or absent): [n].
inline void check_ula_step(const char* op, uintptr_t out, int64_t out_numel, uintptr_t x,
                           int64_t x_numel, uintptr_t grad_logp, int64_t grad_logp_numel,
                           uintptr_t noise, int64_t noise_numel, int64_t n) {
  check_buffer(op, {"out", out, out_numel}, {n});
  check_buffer(op, {"x", x, x_numel}, {n});
  check_buffer(op, {"grad_logp", grad_logp, grad_logp_numel}, {n});
  check_optional_buffer(op, {"noise", noise, noise_numel}, {n});
}

// out, z, y, grad_logp, noise (or absent): [n].
inline void check_proximal_step(const char* op, uintptr_t out, int64_t out_numel, uintptr_t z,
                                int64_t z_numel, uintptr_t y, int64_t y_numel,
                                uintptr_t grad_logp, int64_t grad_logp_numel, uintptr_t noise,
                                int64_t noise_numel, int64_t n) {
  check_buffer(op, {"out", out, out_numel}, {n});
  check_buffer(op, {"z", z, z_numel}, {n});
  check_buffer(op, {"y", y, y_numel}, {n});
  check_buffer(op, {"grad_logp", grad_logp, grad_logp_numel}, {n});
  check_optional_buffer(op, {"noise", noise, noise_numel}, {n});
}

// x_out, v_out, x, v, grad_logp: [n]; noise (or absent): [2, n].
inline void check_uld_step(const char* op, uintptr_t x_out, int64_t x_out_numel, uintptr_t v_out,
                           int64_t v_out_numel, uintptr_t x, int64_t x_numel, uintptr_t v,
                           int64_t v_numel, uintptr_t grad_logp, int64_t grad_logp_numel,
                           uintptr_t noise, int64_t noise_numel, int64_t n) {
  check_buffer(op, {"x_out", x_out, x_out_numel}, {n});
  check_buffer(op, {"v_out", v_out, v_out_numel}, {n});
  check_buffer(op, {"x", x, x_numel}, {n});
  check_buffer(op, {"v", v, v_numel}, {n});
  check_buffer(op, {"grad_logp", grad_logp, grad_logp_numel}, {n});
  check_optional_buffer(op, {"noise", noise, noise_numel}, {2, n});
}

// The chains' states and gradients: [chains, dim]; log-densities, accepted, uniforms (or
// absent): [chains].
inline void check_mala_accept(const char* op, uintptr_t x_out, int64_t x_out_numel,
                              uintptr_t logp_out, int64_t logp_out_numel, uintptr_t grad_out,
                              int64_t grad_out_numel, uintptr_t accepted, int64_t accepted_numel,
                              uintptr_t x, int64_t x_numel, uintptr_t logp, int64_t logp_numel,
                              uintptr_t grad_logp, int64_t grad_logp_numel, uintptr_t x_prop,
                              int64_t x_prop_numel, uintptr_t logp_prop, int64_t logp_prop_numel,
                              uintptr_t grad_logp_prop, int64_t grad_logp_prop_numel,
                              uintptr_t uniforms, int64_t uniforms_numel, int64_t chains,
                              int64_t dim) {
  check_buffer(op, {"x_out", x_out, x_out_numel}, {chains, dim});
  check_buffer(op, {"logp_out", logp_out, logp_out_numel}, {chains});
  check_buffer(op, {"grad_out", grad_out, grad_out_numel}, {chains, dim});
  check_buffer(op, {"accepted", accepted, accepted_numel}, {chains});
  check_buffer(op, {"x", x, x_numel}, {chains, dim});
  check_buffer(op, {"logp", logp, logp_numel}, {chains});
  check_buffer(op, {"grad_logp", grad_logp, grad_logp_numel}, {chains, dim});
  check_buffer(op, {"x_prop", x_prop, x_prop_numel}, {chains, dim});
  check_buffer(op, {"logp_prop", logp_prop, logp_prop_numel}, {chains});
  check_buffer(op, {"grad_logp_prop", grad_logp_prop, grad_logp_prop_numel}, {chains, dim});
  check_optional_buffer(op, {"uniforms", uniforms, uniforms_numel}, {chains});
}

}  // namespace langevin
PONDER_NAMESPACE_END
