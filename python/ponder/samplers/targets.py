"""The library of target distributions for the samplers, batched over chains ``x: [C, d]``:
the Gaussian family (with exact Ornstein-Uhlenbeck marginals for the diffusion samplers),
Bayesian logistic regression (a finite sum), the double well, and :func:`make_target` by name.

What a target is (``logp``, ``grad_logp``, samples, user functions) is defined in
:mod:`ponder.samplers.protocol`; its names are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..validation import GeneratorLike, as_generator, check_int, check_real
from .protocol import (
    DiffusionTarget,
    FiniteSumTarget,
    Target,
    check_time,
    checked_grad_logp,
    checked_logp_and_grad,
    checked_logp_and_score,
    checked_score,
    float_tensor,
)

__all__ = [
    "TARGETS",
    "BayesianLogisticRegression",
    "CorrelatedGaussian",
    "DiffusionTarget",
    "DoubleWell",
    "FiniteSumTarget",
    "Gaussian",
    "GaussianMixture",
    "Target",
    "checked_grad_logp",
    "checked_logp_and_grad",
    "checked_logp_and_score",
    "checked_score",
    "make_target",
]

_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------------------------
# Gaussian family
# --------------------------------------------------------------------------------------------


class GaussianMixture(DiffusionTarget):
    """``p(x) = sum_k w_k N(x; mu_k, Sigma_k)`` in any dimension, normalised.

    Parameters
    ----------
    weights : [K]
        Positive; normalised to sum to 1.
    means : [K, d]
    covs : [K, d, d] or [d, d], optional
        Full covariances (symmetric positive definite; one shared matrix if [d, d]).
    stds : float, [K] or [K, d], optional
        Standard deviations instead: one for all, one per component (isotropic), or per
        component and coordinate (diagonal). Default 1. Give ``covs`` or ``stds``, not both.

    The OU marginals are exact: ``p_t = sum_k w_k N(e^-t mu_k, e^-2t Sigma_k + (1 - e^-2t) I)``.
    Log-densities combine the components with ``logsumexp`` and scores with the softmax
    responsibilities, so far-away points give finite values. The per-``t`` covariance factors
    are computed once in float64 and cached (per ``t``, dtype and device).
    """

    normalized = True

    def __init__(self, weights, means, covs=None, stds=None):
        op = type(self).__name__
        means = float_tensor(op, "means", means)
        if means.dim() != 2 or 0 in means.shape:
            raise ValueError(f"{op}: means must have shape [K, d], got {tuple(means.shape)}")
        k, d = means.shape
        super().__init__(d)
        weights = float_tensor(op, "weights", weights).to(means)
        if tuple(weights.shape) != (k,):
            raise ValueError(
                f"{op}: weights must have shape ({k},) (one per mean), got {tuple(weights.shape)}"
            )
        if not bool((weights > 0).all()):
            raise ValueError(f"{op}: weights must be > 0")
        self.means = means.contiguous()
        self.log_weights = torch.log(weights / weights.sum())
        if covs is not None and stds is not None:
            raise ValueError(f"{op}: give covs or stds, not both")
        if covs is None:
            self.covs, self.scale_tril = None, None
            self.stds = self._init_stds(op, 1.0 if stds is None else stds, k, d)
            dtype = torch.promote_types(means.dtype, self.stds.dtype)
        else:
            self.stds = None
            self.covs, self.scale_tril = self._init_covs(op, covs, k, d)
            dtype = torch.promote_types(means.dtype, self.covs.dtype)
        # One dtype for every parameter: the widest one given.
        for name in ("means", "log_weights", "stds", "covs", "scale_tril"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(dtype))
        self._cache: dict = {}

    @staticmethod
    def _init_stds(op: str, stds, k: int, d: int) -> Tensor:
        stds = float_tensor(op, "stds", stds)
        if stds.dim() == 0:
            stds = stds.expand(k, d)
        elif tuple(stds.shape) == (k,):
            stds = stds[:, None].expand(k, d)
        elif tuple(stds.shape) != (k, d):
            raise ValueError(
                f"{op}: stds must be a number, [{k}] or [{k}, {d}], got {tuple(stds.shape)}"
            )
        if not bool((stds > 0).all()):
            raise ValueError(f"{op}: stds must be > 0")
        return stds.contiguous()

    @staticmethod
    def _init_covs(op: str, covs, k: int, d: int) -> tuple[Tensor, Tensor]:
        covs = float_tensor(op, "covs", covs)
        if tuple(covs.shape) == (d, d):
            covs = covs.expand(k, d, d)
        if tuple(covs.shape) != (k, d, d):
            raise ValueError(
                f"{op}: covs must have shape [{k}, {d}, {d}] or [{d}, {d}], got {tuple(covs.shape)}"
            )
        scale = covs.abs().amax().clamp_min(1e-300)
        if not torch.allclose(covs, covs.mT, rtol=0.0, atol=1e-8 * float(scale)):
            raise ValueError(f"{op}: covs must be symmetric")
        covs = (0.5 * (covs + covs.mT)).contiguous()
        chol, info = torch.linalg.cholesky_ex(covs.to(torch.float64))
        if bool((info != 0).any()):
            raise ValueError(f"{op}: covs must be positive definite")
        return covs, chol.to(covs.dtype)

    # ---- properties ---------------------------------------------------------------------------

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def weights(self) -> Tensor:
        """``[K]``, summing to 1."""
        return self.log_weights.exp()

    def component_covs(self) -> Tensor:
        """``[K, d, d]`` component covariances (diagonal ones made full)."""
        if self.covs is not None:
            return self.covs
        return torch.diag_embed(self.stds**2)

    @property
    def mean(self) -> Tensor:
        """The mixture's mean ``[d]``."""
        return self.weights @ self.means

    @property
    def covariance(self) -> Tensor:
        """The mixture's covariance ``[d, d]``: ``sum_k w_k (Sigma_k + mu_k mu_k^T) - m m^T``."""
        w, mu, m = self.weights, self.means, self.mean
        second = w[:, None, None] * (self.component_covs() + mu[:, :, None] * mu[:, None, :])
        return second.sum(0) - m[:, None] * m[None, :]

    # ---- the OU marginals ---------------------------------------------------------------------

    def _marginal(self, t: float, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(means_t [K, d], var_t [K, d] or scale_tril_t [K, d, d], log_norm_t [K])`` in
        ``like``'s dtype and device; ``log_norm_t = log w_k - (d log 2 pi + log det) / 2``."""
        key = (t, like.dtype, like.device)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        decay = math.exp(-t)
        added = -math.expm1(-2.0 * t)  # 1 - e^-2t without cancellation at small t
        means = decay * self.means.to(torch.float64)
        if self.covs is None:
            scale = decay**2 * self.stds.to(torch.float64) ** 2 + added
            logdet = scale.log().sum(-1)
        else:
            eye = torch.eye(self.dim, dtype=torch.float64, device=self.covs.device)
            scale = torch.linalg.cholesky(decay**2 * self.covs.to(torch.float64) + added * eye)
            logdet = 2.0 * scale.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        log_norm = self.log_weights.to(torch.float64) - 0.5 * (self.dim * _LOG_2PI + logdet)
        hit = tuple(v.to(device=like.device, dtype=like.dtype) for v in (means, scale, log_norm))
        if len(self._cache) >= 64:
            self._cache.clear()
        self._cache[key] = hit
        return hit

    def _evaluate(self, x: Tensor, t: float, need_score: bool):
        means, scale, log_norm = self._marginal(t, x)
        diff = x.unsqueeze(1) - means  # [C, K, d]
        prec_diff = None
        if self.covs is None:
            prec_diff = diff / scale
            quad = (diff * prec_diff).sum(-1)
        else:
            # Solve for all chains at once: they are the right-hand sides, [K, d, C].
            z = torch.linalg.solve_triangular(scale, diff.permute(1, 2, 0), upper=False)
            quad = (z * z).sum(1).T
            if need_score:
                w = torch.linalg.solve_triangular(scale.mT, z, upper=True)
                prec_diff = w.permute(2, 0, 1)
        log_comp = log_norm - 0.5 * quad  # [C, K]
        logp = torch.logsumexp(log_comp, dim=-1)
        if not need_score:
            return logp, None
        resp = torch.softmax(log_comp, dim=-1)
        return logp, -(resp.unsqueeze(-1) * prec_diff).sum(1)

    def logp_t(self, x: Tensor, t: float) -> Tensor:
        self._check_x("logp_t", x)
        return self._evaluate(x, check_time(f"{type(self).__name__}.logp_t", t), False)[0]

    def score(self, x: Tensor, t: float) -> Tensor:
        self._check_x("score", x)
        return self._evaluate(x, check_time(f"{type(self).__name__}.score", t), True)[1]

    def logp_and_score(self, x: Tensor, t: float) -> tuple[Tensor, Tensor]:
        self._check_x("logp_and_score", x)
        return self._evaluate(x, check_time(f"{type(self).__name__}.logp_and_score", t), True)

    def sample(self, n: int, generator: GeneratorLike = None) -> Tensor:
        n = check_int(f"{type(self).__name__}.sample", "n", n)
        dev, dt = self.means.device, self.means.dtype
        gen = as_generator(f"{type(self).__name__}.sample", generator, dev)
        if n == 0:
            return torch.empty(0, self.dim, dtype=dt, device=dev)
        w = self.log_weights.to(torch.float64).exp()
        comp = torch.multinomial(w, n, replacement=True, generator=gen)
        eps = torch.randn(n, self.dim, generator=gen, dtype=dt, device=dev)
        if self.covs is None:
            return self.means[comp] + self.stds[comp] * eps
        return self.means[comp] + (self.scale_tril[comp] @ eps.unsqueeze(-1)).squeeze(-1)

    def to(self, device=None, dtype=None) -> GaussianMixture:
        new = super().to(device=device, dtype=dtype)
        new._cache = {}
        return new

    def __repr__(self) -> str:
        kind = "diagonal" if self.covs is None else "full"
        return f"{type(self).__name__}(dim={self.dim}, n_components={self.n_components}, {kind})"

    @classmethod
    def symmetric(
        cls, dim: int, n_axes: int | None = None, radius: float = 4.0, std: float = 1.0
    ) -> GaussianMixture:
        """Equal-weight modes at ``+-radius * e_j`` for the first ``n_axes`` coordinates
        (default ``min(dim, 4)``: 2 modes in 1-D, a "plus" of 4 in 2-D, 8 in d >= 4), all with
        isotropic ``std``.

        With the defaults, neighbouring modes are ``radius * sqrt(2) = 5.7`` standard deviations
        apart and the density at the saddle between them is about ``2 e^-4`` (4%) of a peak:
        Langevin samplers cross between modes, but slowly, which is the regime where SPS's
        proximal steps and RTK's large reverse steps should pay off. The other ``dim - n_axes`` coordinates are N(0,
        std^2) in every mode.
        """
        op = f"{cls.__name__}.symmetric"
        dim = check_int(op, "dim", dim, minimum=1)
        n_axes = min(dim, 4) if n_axes is None else check_int(op, "n_axes", n_axes, minimum=1)
        if n_axes > dim:
            raise ValueError(f"{op}: n_axes must be <= dim = {dim}, got {n_axes}")
        radius = check_real(op, "radius", radius, positive=True)
        std = check_real(op, "std", std, positive=True)
        means = torch.zeros(2 * n_axes, dim, dtype=torch.float64)
        for j in range(n_axes):
            means[2 * j, j], means[2 * j + 1, j] = radius, -radius
        return cls(torch.ones(2 * n_axes, dtype=torch.float64), means, stds=std)


class Gaussian(GaussianMixture):
    """``N(mean, Sigma)``, normalised: a one-component :class:`GaussianMixture`.

    Parameters
    ----------
    mean : [d]
    cov : [d, d], optional
        Full covariance (factored once by Cholesky).
    std : float or [d], optional
        Isotropic or diagonal standard deviations instead (default 1). Not with ``cov``.
    """

    def __init__(self, mean, cov=None, std=None):
        op = type(self).__name__
        mean = float_tensor(op, "mean", mean)
        if mean.dim() != 1 or mean.numel() == 0:
            raise ValueError(f"{op}: mean must have shape [d], got {tuple(mean.shape)}")
        d = mean.numel()
        if cov is not None:
            cov = float_tensor(op, "cov", cov)
            if tuple(cov.shape) != (d, d):
                raise ValueError(f"{op}: cov must have shape [{d}, {d}], got {tuple(cov.shape)}")
            cov = cov[None]
        if std is not None:
            std = float_tensor(op, "std", std)
            if std.dim() == 1:
                if std.numel() != d:
                    raise ValueError(f"{op}: std must be a number or [{d}], got {tuple(std.shape)}")
                std = std[None]
            elif std.dim() != 0:
                raise ValueError(f"{op}: std must be a number or [{d}], got {tuple(std.shape)}")
        super().__init__(torch.ones(1, dtype=mean.dtype), mean[None], covs=cov, stds=std)


class CorrelatedGaussian(Gaussian):
    """A 2-D Gaussian with standard deviations ``std`` and correlation ``rho`` (|rho| < 1)."""

    def __init__(
        self, rho: float, std: Sequence[float] = (1.0, 1.0), mean: Sequence[float] = (0.0, 0.0)
    ):
        op = type(self).__name__
        rho = check_real(op, "rho", rho)
        if not -1.0 < rho < 1.0:
            raise ValueError(f"{op}: rho must be in (-1, 1), got {rho}")
        s = float_tensor(op, "std", std)
        if tuple(s.shape) != (2,) or not bool((s > 0).all()):
            raise ValueError(f"{op}: std must be two positive numbers, got {std}")
        s1, s2 = float(s[0]), float(s[1])
        cov = torch.tensor([[s1 * s1, rho * s1 * s2], [rho * s1 * s2, s2 * s2]], dtype=s.dtype)
        super().__init__(mean, cov=cov)
        self.rho = rho


# --------------------------------------------------------------------------------------------
# Bayesian logistic regression
# --------------------------------------------------------------------------------------------


class BayesianLogisticRegression(FiniteSumTarget):
    """Posterior of logistic-regression weights ``w: [d]`` under a ``N(0, prior_std^2 I)`` prior.

    ``logp(w) = sum_i [y_i z_i - softplus(z_i)] - |w|^2 / (2 prior_std^2)`` with
    ``z_i = <x_i, w>``: unnormalised (the evidence is unknown; constants are dropped). As a
    finite sum, ``f_i(w) = -[y_i z_i - softplus(z_i)] + |w|^2 / (2 n prior_std^2)`` (each data
    point carries ``1/n`` of the prior), so a minibatch estimate keeps the prior term exact (see
    :class:`FiniteSumTarget`). No exact sampler.

    Parameters
    ----------
    features : [N, d]
    labels : [N]
        0 / 1 (bool, integer or floating).
    prior_std : float
    """

    def __init__(self, features, labels, prior_std: float = 10.0):
        op = type(self).__name__
        features = float_tensor(op, "features", features)
        if features.dim() != 2 or 0 in features.shape:
            raise ValueError(f"{op}: features must have shape [N, d], got {tuple(features.shape)}")
        n, d = features.shape
        labels = labels.detach() if isinstance(labels, Tensor) else torch.as_tensor(labels)
        if tuple(labels.shape) != (n,):
            raise ValueError(f"{op}: labels must have shape ({n},), got {tuple(labels.shape)}")
        labels = labels.to(device=features.device, dtype=features.dtype)
        if not bool(((labels == 0) | (labels == 1)).all()):
            raise ValueError(f"{op}: labels must be 0 or 1")
        super().__init__(d, n)
        self.prior_std = check_real(op, "prior_std", prior_std, positive=True)
        self.features = features.contiguous()
        self.labels = labels
        self.true_weights: Tensor | None = None

    @classmethod
    def synthetic(
        cls,
        n: int = 3000,
        d: int = 3,
        true_weights: Sequence[float] | None = (1.0, 2.0, 3.0),
        seed: int = 0,
        prior_std: float = 10.0,
    ) -> BayesianLogisticRegression:
        """``n`` points with features ``N(0, I_d)`` and labels ``Bernoulli(sigmoid(<x, w*>))``.

        ``true_weights`` (``w*``, default ``(1, 2, 3)``; None gives ``(1, ..., d)``) is kept as
        the ``true_weights`` attribute. Deterministic given ``seed``.
        """
        op = f"{cls.__name__}.synthetic"
        n = check_int(op, "n", n, minimum=1)
        d = check_int(op, "d", d, minimum=1)
        if true_weights is None:
            true_weights = [float(j) for j in range(1, d + 1)]
        w = float_tensor(op, "true_weights", true_weights)
        if tuple(w.shape) != (d,):
            raise ValueError(f"{op}: true_weights must have {d} entries (d), got {tuple(w.shape)}")
        gen = torch.Generator().manual_seed(check_int(op, "seed", seed))
        features = torch.randn(n, d, generator=gen, dtype=torch.float64)
        probs = torch.sigmoid(features @ w.to(torch.float64))
        labels = (torch.rand(n, generator=gen, dtype=torch.float64) < probs).to(torch.float64)
        target = cls(features, labels, prior_std=prior_std)
        target.true_weights = w.to(torch.float64)
        return target

    def _terms(self, x: Tensor, feats: Tensor, labels: Tensor, scale: float, need_grad: bool):
        z = x @ feats.T  # [C, B]
        prior_prec = 1.0 / self.prior_std**2
        loglik = (labels * z - torch.nn.functional.softplus(z)).sum(-1)
        logp = scale * loglik - 0.5 * prior_prec * (x * x).sum(-1)
        if not need_grad:
            return logp, None
        grad = scale * ((labels - torch.sigmoid(z)) @ feats) - prior_prec * x
        return logp, grad

    def logp_and_grad_minibatch(self, x: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        self._check_x("logp_and_grad_minibatch", x)
        idx = self._check_idx(idx).to(self.features.device)
        feats = self.features[idx].to(x)
        labels = self.labels[idx].to(x)
        return self._terms(x, feats, labels, self.n_data / idx.numel(), True)

    def logp_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check_x("logp_and_grad", x)
        return self._terms(x, self.features.to(x), self.labels.to(x), 1.0, True)

    def logp(self, x: Tensor) -> Tensor:
        self._check_x("logp", x)
        return self._terms(x, self.features.to(x), self.labels.to(x), 1.0, False)[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, n_data={self.n_data})"


# --------------------------------------------------------------------------------------------
# Double well
# --------------------------------------------------------------------------------------------


class DoubleWell(Target):
    """A non-log-concave target: ``f(x) = a (x_1^2 - 1)^2 + |x_{2:d}|^2 / 2``, normalised.

    Two wells at ``x_1 = +-1`` separated by a barrier of height ``a`` (in units of ``kT``) at
    ``x_1 = 0``; the other coordinates are independent N(0, 1). The default ``a = 2`` puts the
    saddle at ``e^-2`` of the peak density: Langevin chains hop between the wells, slowly.
    ``f`` is not convex for any ``a > 0`` (``f''(0) = -4a``).

    The 1-D normaliser is computed once by the trapezoidal rule (spectrally accurate for this
    smooth, super-exponentially decaying integrand), so ``logp`` is normalised. Exact samples of
    ``x_1`` come from rejection sampling under the envelope ``exp(-a (|x| - 1)^2)`` (a
    two-Gaussian mixture; acceptance rate about 1/2).
    """

    normalized = True

    def __init__(self, dim: int = 2, a: float = 2.0):
        super().__init__(dim)
        self.a = check_real(type(self).__name__, "a", a, positive=True)
        half = math.sqrt(1.0 + math.sqrt(50.0 / self.a)) + 0.5  # a (x^2 - 1)^2 > 50 beyond
        grid = torch.linspace(-half, half, 40001, dtype=torch.float64)
        z1 = float(torch.trapezoid(torch.exp(-self.a * (grid**2 - 1.0) ** 2), grid))
        self.log_normalizer = math.log(z1) + 0.5 * (dim - 1) * _LOG_2PI
        # Carries the dtype and device of samples; moved by .to().
        self._like = torch.empty(0, dtype=torch.float64)

    def _potential_1d(self, x1: Tensor) -> Tensor:
        return self.a * (x1 * x1 - 1.0) ** 2

    def logp(self, x: Tensor) -> Tensor:
        self._check_x("logp", x)
        rest = 0.5 * (x[:, 1:] ** 2).sum(-1)
        return -(self._potential_1d(x[:, 0]) + rest) - self.log_normalizer

    def grad_logp(self, x: Tensor) -> Tensor:
        self._check_x("grad_logp", x)
        grad = -x.clone()
        x1 = x[:, 0]
        grad[:, 0] = -4.0 * self.a * x1 * (x1 * x1 - 1.0)
        return grad

    def logp_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.logp(x), self.grad_logp(x)

    def sample(self, n: int, generator: GeneratorLike = None) -> Tensor:
        n = check_int(f"{type(self).__name__}.sample", "n", n)
        dev, dt = self._like.device, self._like.dtype
        gen = as_generator(f"{type(self).__name__}.sample", generator, dev)
        # exp(-a (x^2-1)^2) <= exp(-a (|x|-1)^2) = sqrt(pi/a) N(x; sign(x), 1/(2a))
        #                   <= M q(x) with q = (N(1, s^2) + N(-1, s^2)) / 2 and M = 2 sqrt(pi/a).
        s = math.sqrt(0.5 / self.a)
        log_m = math.log(2.0 * math.sqrt(math.pi / self.a))
        kept, have = [], 0
        while have < n:
            m = max(2 * (n - have), 64)
            coin = torch.rand(m, generator=gen, dtype=torch.float64, device=dev) < 0.5
            sign = 2.0 * coin.to(torch.float64) - 1.0
            prop = sign + s * torch.randn(m, generator=gen, dtype=torch.float64, device=dev)
            var2 = 2.0 * s * s
            log_q = torch.logaddexp(-((prop - 1.0) ** 2) / var2, -((prop + 1.0) ** 2) / var2)
            log_q = log_q + math.log(0.5) - 0.5 * math.log(math.pi * var2)
            u = torch.rand(m, generator=gen, dtype=torch.float64, device=dev)
            ok = torch.log(u) + log_m + log_q < -self._potential_1d(prop)
            kept.append(prop[ok])
            have += int(ok.sum())
        x1 = torch.cat(kept)[:n] if kept else torch.empty(0, dtype=torch.float64, device=dev)
        rest = torch.randn(n, self.dim - 1, generator=gen, dtype=torch.float64, device=dev)
        return torch.cat([x1[:, None], rest], dim=1).to(dt)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, a={self.a})"


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def _make_gaussian(dim: int, *, mean=None, cov=None, std=None) -> Target:
    mean = torch.zeros(dim, dtype=torch.float64) if mean is None else mean
    return Gaussian(mean, cov=cov, std=std)


def _make_correlated_gaussian(dim: int = 2, *, rho: float = 0.9, std=(1.0, 1.0)) -> Target:
    if dim != 2:
        raise ValueError(f"correlated-gaussian is 2-D; got dim={dim}")
    return CorrelatedGaussian(rho, std=std)


def _make_mixture(
    dim: int, *, n_axes: int | None = None, radius: float = 4.0, std: float = 1.0
) -> Target:
    return GaussianMixture.symmetric(dim, n_axes=n_axes, radius=radius, std=std)


def _make_logistic(
    dim: int = 3, *, n: int = 3000, true_weights=None, seed: int = 0, prior_std: float = 10.0
) -> Target:
    return BayesianLogisticRegression.synthetic(
        n=n, d=dim, true_weights=true_weights, seed=seed, prior_std=prior_std
    )


def _make_double_well(dim: int, *, a: float = 2.0) -> Target:
    return DoubleWell(dim, a=a)


#: Target factories by name: ``TARGETS[name](dim, **kwargs) -> Target``.
TARGETS: dict[str, Callable[..., Target]] = {
    "gaussian": _make_gaussian,
    "correlated-gaussian": _make_correlated_gaussian,
    "mixture": _make_mixture,
    "logistic": _make_logistic,
    "double-well": _make_double_well,
}


def make_target(name: str, dim: int = 2, **kwargs) -> Target:
    """A target by name, with defaults:

    - ``"gaussian"``: N(0, I_dim) (``mean``, ``cov``, ``std`` as for :class:`Gaussian`).
    - ``"correlated-gaussian"``: 2-D, ``rho = 0.9``, unit standard deviations (dim must be 2).
    - ``"mixture"``: :meth:`GaussianMixture.symmetric` (modes at ``+-4 e_j``, j < min(dim, 4),
      unit std; ``n_axes``, ``radius``, ``std``).
    - ``"logistic"``: :meth:`BayesianLogisticRegression.synthetic` with ``d = dim``, 3000 points
      and true weights ``(1, ..., dim)`` (so ``(1, 2, 3)`` for dim = 3; ``n``, ``true_weights``,
      ``seed``, ``prior_std``).
    - ``"double-well"``: :class:`DoubleWell` with ``a = 2`` (``a``).
    """
    if name not in TARGETS:
        raise ValueError(f"make_target: unknown target {name!r}; known: {', '.join(TARGETS)}")
    dim = check_int("make_target", "dim", dim, minimum=1)
    try:
        return TARGETS[name](dim, **kwargs)
    except TypeError as err:
        raise TypeError(f"make_target({name!r}): {err}") from err
