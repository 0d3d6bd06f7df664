"""Benchmarks of the fused Langevin steps (ponder.ops.langevin) and of MALA end to end.

Run with `python bench/run.py` (writes bench/results/<date>.json and the table in bench/README.md),
or `pytest bench/` for pytest-benchmark's own report.

Implementations compared (``extra_info["impl"]``):
  ponder-<backend>  ponder's op on that backend (cpu, cuda, triton; torch = ponder's plain-torch
                    reference backend), noise drawn inside the op from ``generator=SEED``;
  eager-torch       the composition a user writes by hand (below: ``eager_*``), in float32;
  blackjax          blackjax.mala, ``jax.jit`` of the step vmapped over the chains (MALA only).

Bytes per call (``extra_info["bytes"]``) count each input read once and each output written once;
noise drawn in-kernel moves no bytes, and computing the user's gradient is not part of any step.
The same count serves every implementation, so GB/s compares like with like.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import ponder
import pytest
import torch
from ponder.ops import langevin
from torch import Tensor

SEED = 1234
DIM = 100
SIZES = {"1e6": 10**6, "1e7": 10**7}  # fp32 values per [C, DIM] tensor
STEP_SIZE = 0.01
FRICTION = 1.0
ETA = 0.1
ACCEPT_STEP_SIZE = 0.3  # ~56% of the proposals of a standard normal in d=100 are accepted
COPY_BYTES = 512 * 2**20  # the copy probe's tensor: 512 MiB of fp32
FP32 = torch.float32

CPU = torch.device("cpu")
CUDA = torch.device("cuda")
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def require_backend(name: str) -> None:
    """Skip, not fail, where a ponder backend is not built or cannot run here."""
    status = ponder.available_backends()[name]
    if not status.available:
        pytest.skip(f"backend {name!r} unavailable: {status.reason}")


def shape_of(size: str) -> tuple[int, int]:
    return SIZES[size] // DIM, DIM


# --------------------------------------------------------------------------------------------
# The eager torch compositions: what a user writes without ponder.
# --------------------------------------------------------------------------------------------


def eager_ula(x: Tensor, g: Tensor, h: float) -> Tensor:
    return x + h * g + math.sqrt(2.0 * h) * torch.randn_like(x)


def eager_uld(x: Tensor, v: Tensor, g: Tensor, h: float, gamma: float) -> tuple[Tensor, Tensor]:
    a, b, e, sv, sxv, sx = langevin.uld_coefficients(h, gamma)  # host floats, negligible
    n_v = torch.randn_like(x)
    n_x = torch.randn_like(x)
    v_new = a * v + b * g + sv * n_v
    x_new = x + b * v + e * g + sxv * n_v + sx * n_x
    return x_new, v_new


def eager_proximal(z: Tensor, y: Tensor, g: Tensor, tau: float, eta: float) -> Tensor:
    noise = torch.randn_like(z)
    return (1.0 - tau / eta) * z + (tau / eta) * y + tau * g + math.sqrt(2.0 * tau) * noise


def eager_mala_accept(x: Tensor, logp: Tensor, g: Tensor, xp: Tensor, logp_p: Tensor, gp: Tensor,
                      h: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    log_q_fwd = -((xp - x - h * g) ** 2).sum(-1) / (4 * h)
    log_q_bwd = -((x - xp - h * gp) ** 2).sum(-1) / (4 * h)
    log_alpha = logp_p - logp + log_q_bwd - log_q_fwd
    accepted = torch.log(torch.rand_like(logp)) < log_alpha
    row = accepted.unsqueeze(-1)
    return (torch.where(row, xp, x), torch.where(accepted, logp_p, logp),
            torch.where(row, gp, g), accepted)


# --------------------------------------------------------------------------------------------
# The step ops: inputs, the ponder call, the eager call, the bytes.
# --------------------------------------------------------------------------------------------


def standard_normal_state(shape: tuple[int, int], device: torch.device) -> dict[str, Tensor]:
    """x, and a proposal xp from it, for the standard normal target (grad logp = -x)."""
    gen = torch.Generator(device=device).manual_seed(SEED)
    x = torch.randn(shape, generator=gen, dtype=FP32, device=device)
    g = -x
    noise = torch.randn(shape, generator=gen, dtype=FP32, device=device)
    xp = x + ACCEPT_STEP_SIZE * g + math.sqrt(2 * ACCEPT_STEP_SIZE) * noise
    return {
        "x": x, "g": g.contiguous(), "logp": -0.5 * (x * x).sum(-1),
        "xp": xp, "gp": (-xp).contiguous(), "logp_p": -0.5 * (xp * xp).sum(-1),
        "v": noise, "y": torch.randn(shape, generator=gen, dtype=FP32, device=device),
    }


def _ponder_call(op: str, t: dict[str, Tensor], backend: str) -> Callable[[], object]:
    kw = {"generator": SEED, "backend": backend}
    calls = {
        "ula_step": lambda: langevin.ula_step(t["x"], t["g"], STEP_SIZE, **kw),
        "mala_propose": lambda: langevin.mala_propose(t["x"], t["g"], STEP_SIZE, **kw),
        "uld_step": lambda: langevin.uld_step(t["x"], t["v"], t["g"], STEP_SIZE, FRICTION, **kw),
        "proximal_step": lambda: langevin.proximal_step(t["x"], t["y"], t["g"], STEP_SIZE, ETA,
                                                        **kw),
        "mala_accept": lambda: langevin.mala_accept(t["x"], t["logp"], t["g"], t["xp"],
                                                    t["logp_p"], t["gp"], ACCEPT_STEP_SIZE, **kw),
    }
    return calls[op]


def _eager_call(op: str, t: dict[str, Tensor]) -> Callable[[], object]:
    calls = {
        "ula_step": lambda: eager_ula(t["x"], t["g"], STEP_SIZE),
        "mala_propose": lambda: eager_ula(t["x"], t["g"], STEP_SIZE),
        "uld_step": lambda: eager_uld(t["x"], t["v"], t["g"], STEP_SIZE, FRICTION),
        "proximal_step": lambda: eager_proximal(t["x"], t["y"], t["g"], STEP_SIZE, ETA),
        "mala_accept": lambda: eager_mala_accept(t["x"], t["logp"], t["g"], t["xp"], t["logp_p"],
                                                 t["gp"], ACCEPT_STEP_SIZE),
    }
    return calls[op]


# (full-size tensors read, full-size tensors written) per call
_TRAFFIC = {
    "ula_step": (2, 1),  # x, g -> x_new
    "mala_propose": (2, 1),  # x, g -> x_prop
    "uld_step": (3, 2),  # x, v, g -> x_new, v_new
    "proximal_step": (3, 1),  # z, y, g -> z_new
    "mala_accept": (4, 2),  # x, g, x_prop, g_prop -> x_new, g_new
}
STEP_OPS = list(_TRAFFIC)


def step_bytes(op: str, shape: tuple[int, int]) -> int:
    chains, dim = shape
    reads, writes = _TRAFFIC[op]
    total = (reads + writes) * chains * dim * 4
    if op == "mala_accept":
        total += chains * (4 + 4 + 4 + 1)  # logp, logp_prop (fp32) -> logp_new, accepted (bool)
    return total


def _bench_step(measure, op: str, size: str, impl: str, device: torch.device) -> None:
    shape = shape_of(size)
    t = standard_normal_state(shape, device)
    if impl == "eager-torch":
        fn = _eager_call(op, t)
    else:
        backend = impl.removeprefix("ponder-")
        require_backend(backend)
        fn = _ponder_call(op, t, backend)
    info = {}
    if op == "mala_accept":
        info["accept_rate"] = float(fn()[3].float().mean())
    measure(fn, device=device, group=f"{op} {size} {device.type}", kind="step", op=op,
            size=size, values=shape[0] * shape[1], impl=impl, shape=list(shape), dtype="float32",
            bytes=step_bytes(op, shape), **info)


# --------------------------------------------------------------------------------------------
# Copy bandwidth: the physical limit the memory-bound steps are compared with.
# --------------------------------------------------------------------------------------------


def _bench_copy(measure, device: torch.device) -> None:
    n = COPY_BYTES // 4
    src = torch.ones(n, dtype=FP32, device=device)
    dst = torch.zeros(n, dtype=FP32, device=device)  # touched, so no page faults are timed
    measure(lambda: dst.copy_(src), device=device, group=f"copy {device.type}", kind="copy",
            impl="torch copy_", shape=[n], dtype="float32", bytes=2 * COPY_BYTES)


def test_copy_bandwidth(measure):
    """512 MiB fp32 ``dst.copy_(src)``; bytes = read + write."""
    _bench_copy(measure, CPU)


@pytest.mark.parametrize("impl", ["ponder-cpu", "ponder-torch", "eager-torch"])
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("op", STEP_OPS)
def test_step(measure, op, size, impl):
    _bench_step(measure, op, size, impl, CPU)


# --------------------------------------------------------------------------------------------
# MALA end to end: 1024 chains x d=100, propose -> the user's logp and gradient -> accept.
# --------------------------------------------------------------------------------------------

CHAINS = 1024
MEAN, SCALE = 1.0, 2.0  # Gaussian target N(MEAN, SCALE^2 I), as `ponder sample`
MIX_OFFSET = 0.3  # mixture target: 1/2 N(+MIX_OFFSET 1, I) + 1/2 N(-MIX_OFFSET 1, I)
MALA_STEP = {"gaussian": 0.5, "mixture": 0.15}
TARGET_DESC = {"gaussian": f"N({MEAN}, {SCALE}^2 I)",
               "mixture": f"1/2 N({MIX_OFFSET}, I) + 1/2 N(-{MIX_OFFSET}, I)"}
ACCEPT_STEPS = 50  # untimed steps after the timing, to report the acceptance rate


def gaussian_logp_and_grad(x: Tensor) -> tuple[Tensor, Tensor]:
    z = (x - MEAN) / SCALE
    return -0.5 * (z * z).sum(-1), -z / SCALE


def mixture_logp_and_grad(x: Tensor) -> tuple[Tensor, Tensor]:
    d_plus, d_minus = x - MIX_OFFSET, x + MIX_OFFSET
    l_plus, l_minus = -0.5 * (d_plus * d_plus).sum(-1), -0.5 * (d_minus * d_minus).sum(-1)
    logp = torch.logaddexp(l_plus, l_minus)
    w_plus = torch.exp(l_plus - logp).unsqueeze(-1)
    return logp, -(w_plus * d_plus + (1.0 - w_plus) * d_minus)


TORCH_TARGETS = {"gaussian": gaussian_logp_and_grad, "mixture": mixture_logp_and_grad}


def initial_positions(device: torch.device) -> Tensor:
    gen = torch.Generator().manual_seed(SEED)
    x0 = torch.randn(CHAINS, DIM, generator=gen, dtype=FP32)
    return (MEAN + SCALE * x0).to(device)


def torch_mala_stepper(target: str, impl: str, device: torch.device
                       ) -> Callable[[], Tensor]:
    """A closure doing one MALA step of all chains per call; returns the accepted mask."""
    logp_and_grad = TORCH_TARGETS[target]
    h = MALA_STEP[target]
    x = initial_positions(device)
    logp, g = logp_and_grad(x)
    state = [x, logp, g]
    if impl == "eager-torch":
        def step() -> Tensor:
            x, logp, g = state
            xp = x + h * g + math.sqrt(2.0 * h) * torch.randn_like(x)
            logp_p, gp = logp_and_grad(xp)
            state[0], state[1], state[2], accepted = eager_mala_accept(x, logp, g, xp, logp_p,
                                                                       gp, h)
            return accepted
        return step

    if impl == "ponder-sampler":
        # The ponder.samplers.MALA class around the same target functions: the kernels plus the
        # sampler's bookkeeping and its checks of the user's gradient (shape, finiteness).
        from ponder.samplers import MALA, Target

        sampler = MALA(Target.from_functions(DIM, logp_and_grad=logp_and_grad), h,
                       generator=SEED)
        sampler_state = [sampler.init(x)]

        def step() -> Tensor:
            before = sampler_state[0].accepted.clone()
            sampler_state[0] = sampler.step(sampler_state[0])
            return sampler_state[0].accepted != before
        return step

    backend = impl.removeprefix("ponder-")
    gen = torch.Generator(device=device).manual_seed(SEED)  # a fresh seed per call, drawn from it

    def step() -> Tensor:
        x, logp, g = state
        xp = langevin.mala_propose(x, g, h, generator=gen, backend=backend)
        logp_p, gp = logp_and_grad(xp)
        state[0], state[1], state[2], accepted = langevin.mala_accept(
            x, logp, g, xp, logp_p, gp, h, generator=gen, backend=backend)
        return accepted
    return step


def blackjax_mala_stepper(target: str) -> Callable[[], object]:
    """blackjax.mala, the step vmapped over the chains and jitted; returns the accepted mask."""
    import blackjax
    import jax
    import jax.numpy as jnp

    if target == "gaussian":
        def logdensity(x):
            z = (x - MEAN) / SCALE
            return -0.5 * jnp.sum(z * z)
    else:
        def logdensity(x):
            return jnp.logaddexp(-0.5 * jnp.sum((x - MIX_OFFSET) ** 2),
                                 -0.5 * jnp.sum((x + MIX_OFFSET) ** 2))

    mala = blackjax.mala(logdensity, MALA_STEP[target])

    @jax.jit
    def step(key, states):
        key, sub = jax.random.split(key)
        states, info = jax.vmap(mala.step)(jax.random.split(sub, CHAINS), states)
        return key, states, info.is_accepted

    carry = [jax.random.key(SEED), jax.vmap(mala.init)(jnp.asarray(initial_positions(CPU).numpy()))]

    def run() -> object:
        carry[0], carry[1], accepted = step(carry[0], carry[1])
        jax.block_until_ready(carry[1])
        return accepted
    return run


def _mean(accepted: object) -> float:
    """The fraction of True in a torch or jax boolean mask."""
    if isinstance(accepted, Tensor):
        return float(accepted.float().mean())
    return float(accepted.mean())


def _bench_mala(measure, benchmark, target: str, impl: str, device: torch.device) -> None:
    info: dict[str, object] = {}
    if impl == "blackjax":
        jax = pytest.importorskip("jax")
        blackjax = pytest.importorskip("blackjax")
        step = blackjax_mala_stepper(target)
        info["threads"] = "XLA CPU default"
        info["peer_version"] = f"blackjax {blackjax.__version__}, jax {jax.__version__}"
    else:
        if impl.startswith("ponder-") and impl != "ponder-sampler":
            require_backend(impl.removeprefix("ponder-"))
        step = torch_mala_stepper(target, impl, device)
    group = f"mala e2e {target} {device.type}"
    measure(step, device=device, group=group, kind="mala_e2e", target=target, impl=impl,
            chains=CHAINS, dim=DIM, shape=[CHAINS, DIM], dtype="float32",
            step_size=MALA_STEP[target], target_desc=TARGET_DESC[target], **info)
    accepted = sum(_mean(step()) for _ in range(ACCEPT_STEPS))  # untimed
    benchmark.extra_info["accept_rate"] = accepted / ACCEPT_STEPS


@pytest.mark.parametrize("impl", ["ponder-cpu", "ponder-sampler", "ponder-torch", "eager-torch",
                                  "blackjax"])
@pytest.mark.parametrize("target", list(TORCH_TARGETS))
def test_mala_end_to_end(measure, benchmark, target, impl):
    _bench_mala(measure, benchmark, target, impl, CPU)


# --------------------------------------------------------------------------------------------
# GPU: the same benchmarks on CUDA tensors (timed with triton.testing.do_bench).
# --------------------------------------------------------------------------------------------


@pytest.mark.gpu
@NEEDS_CUDA
def test_copy_bandwidth_gpu(measure):
    _bench_copy(measure, CUDA)


@pytest.mark.gpu
@NEEDS_CUDA
@pytest.mark.parametrize("impl", ["ponder-cuda", "ponder-triton", "ponder-torch", "eager-torch"])
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("op", STEP_OPS)
def test_step_gpu(measure, op, size, impl):
    _bench_step(measure, op, size, impl, CUDA)


@pytest.mark.gpu
@NEEDS_CUDA
@pytest.mark.parametrize("impl", ["ponder-cuda", "ponder-triton", "eager-torch"])
@pytest.mark.parametrize("target", list(TORCH_TARGETS))
def test_mala_end_to_end_gpu(measure, benchmark, target, impl):
    _bench_mala(measure, benchmark, target, impl, CUDA)
