"""Langevin-family samplers on ponder's fused step kernels, with targets and metrics.

Samplers (batched over chains, any device, seeded, counting gradient / score calls):

- :class:`ULA` (SGLD with ``batch_size``), :class:`MALA`, :class:`ULD`: ``run(x0, n_steps)``;
- :class:`SPS_SGLD`, :class:`SPS_MALA`: stochastic proximal samplers (arXiv 2405.16734);
- :class:`DDPM`, :class:`RTK_MALA`, :class:`RTK_ULD`: diffusion inference for the OU process
  (reverse transition kernels, arXiv 2405.16387): ``sample(n)``.

The target protocol (:class:`Target`, its finite-sum and diffusion kinds, user functions, the
checked calls) lives in :mod:`ponder.samplers.protocol`; the library of targets
(:func:`make_target` and the classes it builds) in :mod:`ponder.samplers.targets`; metrics (MMD,
TV, sliced Wasserstein, KS, ESS) in :mod:`ponder.samplers.metrics`.

    from ponder.samplers import MALA, make_target
    trace = MALA(make_target("mixture", dim=2), 0.3, generator=0).run(torch.randn(1024, 2), 2000)
    trace.samples  # [T, C, d]
"""

from ._core import Sampler, State, Trace, as_tensor
from .diffusion import DDPM, RTK_MALA, RTK_ULD, DiffusionResult
from .langevin import MALA, ULA, ULD
from .metrics import (
    effective_sample_size,
    ks_per_coordinate,
    mmd_rbf,
    sliced_wasserstein,
    tv_histogram,
)
from .sps import SPS_MALA, SPS_SGLD
from .protocol import DiffusionTarget, FiniteSumTarget, Target, checked_logp_and_grad
from .targets import (
    TARGETS,
    BayesianLogisticRegression,
    CorrelatedGaussian,
    DoubleWell,
    Gaussian,
    GaussianMixture,
    make_target,
)

__all__ = [
    "DDPM",
    "MALA",
    "RTK_MALA",
    "RTK_ULD",
    "SPS_MALA",
    "SPS_SGLD",
    "TARGETS",
    "ULA",
    "ULD",
    "BayesianLogisticRegression",
    "CorrelatedGaussian",
    "DiffusionResult",
    "DiffusionTarget",
    "DoubleWell",
    "FiniteSumTarget",
    "Gaussian",
    "GaussianMixture",
    "Sampler",
    "State",
    "Target",
    "Trace",
    "as_tensor",
    "checked_logp_and_grad",
    "effective_sample_size",
    "ks_per_coordinate",
    "make_target",
    "mmd_rbf",
    "sliced_wasserstein",
    "tv_histogram",
]
