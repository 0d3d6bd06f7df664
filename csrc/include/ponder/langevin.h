// Langevin-family sampler steps: the per-element math shared by the CPU launchers
// (csrc/cpu/langevin.cpp) and the CUDA kernels (csrc/cuda/langevin.cu). Gradients are of the
// log-density (grad_logp = -grad f). Coefficients are computed once per call on the host, in
// double, by the Python layer (ponder/ops/langevin.py) and arrive here as plain numbers.
#pragma once

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
PONDER_NAMESPACE_END
