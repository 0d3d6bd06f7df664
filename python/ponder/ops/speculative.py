"""Speculative decoding's acceptance tests, fused: token-level speculative sampling and RSD's
reward-based step acceptance.

:func:`accept_tokens` runs the lossless token-level test of speculative sampling (Leviathan et
al. 2023; Chen et al. 2023) on a batch: position by position, draft token ``x`` is kept while
``u < min(1, p(x) / q(x))``; at the first rejection a replacement is drawn from
``max(0, p - q)`` and, when all K are kept, a bonus token from ``p`` at position K. ``p`` and
``q`` are the target's and the draft's distributions after temperature, top-k and top-p. The
kernels work from the logits with a row log-sum-exp and draw from ``max(0, p - q)`` by an
exponential race (``argmax_v w_v / E_v``, ``E_v ~ Exp(1)``), so no probability tensor is ever
stored and the residual is never normalised; rows after the first rejection are not read at all.

:func:`accept_steps` is RSD's step test (arXiv 2501.19324): keep a draft step with probability
``omega(reward)``.

Randomness: pass the uniforms for an exact, backend-independent result, or let the kernel draw its
own from a counter-based Philox stream keyed by ``generator`` (int seed, ``torch.Generator``,
None for torch's default generator, or a ``[B]`` int64 tensor of per-row seeds: then row b's
result depends only on its seed and its inputs, whatever else is in the batch).

Each op has a plain-torch ``*_reference`` (the definition, used by the tests) and is registered as
a ``torch.library`` custom op ``ponder::<name>`` with a fake, so it works under ``torch.compile``.
"""

from __future__ import annotations

import math
from typing import NoReturn

import torch
from torch import Tensor

from .. import _backend
from ..validation import (
    MAX_SEED,
    check_int,
    check_probability,
    check_real,
    check_tensor,
    resolve_seed,
)
from ._common import call_op, choose_backend, launch_native, refuse_grad, seeded_generator

__all__ = [
    "OMEGAS",
    "accept_steps",
    "accept_steps_reference",
    "accept_tokens",
    "accept_tokens_reference",
    "keep_thresholds",
    "step_weights_reference",
]

LOGIT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
OMEGAS = ("binary", "constant", "clipping", "sigmoid")
# On CUDA tensors the default is Triton, PROVISIONALLY: the CUDA C++ kernels are compiled but
# have never run, and neither has been timed on a GPU (bench/gpu_check.py measures both, issue
# 23); a measured run picks the faster one per op and records its figure here.
KERNELS = _backend.KernelTable(
    "speculative",
    {op: {"cpu": op, "cuda": op, "triton": op} for op in ("accept_tokens", "accept_steps")},
    cuda_default={"accept_tokens": "triton", "accept_steps": "triton"},
)
# Rows of [rows, V] processed at once when computing top-k / top-p thresholds: bounds the
# temporaries to [_THRESHOLD_CHUNK, V] instead of [B, K, V].
_THRESHOLD_CHUNK = 16


# --------------------------------------------------------------------------------------------
# Sampling filters as keep-thresholds on the raw logits
# --------------------------------------------------------------------------------------------


def keep_thresholds(
    logits: Tensor, temperature: float, top_k: int | None, top_p: float | None
) -> Tensor | None:
    """The smallest raw logit each row keeps under top-k then top-p (None when neither filters).

    A token is kept iff its logit is >= its row's threshold (ties at the threshold are kept).
    top-k keeps the ``top_k`` largest logits; top-p then keeps, in descending order, every token
    whose preceding probability mass (of the top-k-filtered distribution at ``temperature``) is
    below ``top_p`` -- the smallest prefix reaching ``top_p``, at least one token.

    Args:
        logits: ``[..., V]``; temperature: > 0; top_k: int >= 1 or None; top_p: (0, 1] or None.

    Returns:
        ``[...]`` float32 thresholds, or None when no filter applies. Temporaries are at most
        ``[16, V]`` (rows are processed in chunks).
    """
    op = "keep_thresholds"
    temperature = check_real(op, "temperature", temperature, positive=True)
    if top_k is not None:
        top_k = check_int(op, "top_k", top_k, minimum=1)
    if top_p is not None:
        top_p = check_probability(op, "top_p", top_p, zero=False)
    vocab = logits.shape[-1]
    use_k = top_k is not None and top_k < vocab
    use_p = top_p is not None and top_p < 1.0
    if not (use_k or use_p):
        return None
    rows = logits.reshape(-1, vocab)
    out = torch.empty(rows.shape[0], dtype=torch.float32, device=logits.device)
    for start in range(0, rows.shape[0], _THRESHOLD_CHUNK):
        chunk = rows[start : start + _THRESHOLD_CHUNK].float()
        thr = torch.full((chunk.shape[0],), float("-inf"), device=chunk.device)
        if use_k:
            thr = chunk.topk(top_k, dim=-1).values[:, -1]
        if use_p:
            ordered = chunk.sort(dim=-1, descending=True).values
            ordered = ordered.masked_fill(ordered < thr[:, None], float("-inf"))
            probs = torch.softmax(ordered / temperature, dim=-1)
            before = probs.cumsum(-1) - probs  # mass strictly before each token
            n_keep = (before < top_p).sum(-1).clamp(min=1)
            thr = torch.maximum(thr, ordered.gather(-1, (n_keep - 1)[:, None]).squeeze(-1))
        out[start : start + chunk.shape[0]] = thr
    return out.reshape(logits.shape[:-1])


# --------------------------------------------------------------------------------------------
# The contract on non-finite logits (docs/speculative.md; docs/design.md, "4. Validation"), the
# same on every backend: -inf is a masked token; a row is refused when it holds a NaN or when its largest logit,
# in float32 (the precision the kernels compute in) and times 1/T (T = 1 when greedy), is not
# finite -- which covers +inf, a row of only -inf and a logit that overflows at the temperature.
# Top-k / top-p never empty a good row: every keep-threshold is <= the row's largest logit.
# The torch backend checks every row up front (below); the cpu and triton kernels check each row
# in the max pass they already make and the rows they skip afterwards, and report the first bad
# row of each batch row through a negative count, which _raise_for_counts turns into the same
# ValueError.
# --------------------------------------------------------------------------------------------


def _inv_temperature(temperature: float) -> Tensor:
    # 1/T rounded to float32, as every kernel multiplies by it (greedy: 1).
    return torch.tensor(1.0 if temperature == 0.0 else 1.0 / temperature, dtype=torch.float32)


def _raise_bad_row(
    op: str, name: str, logits: Tensor, b: int, j: int, temperature: float
) -> NoReturn:
    """Raise the contract's ValueError for row ``logits[b, j]``, saying what is wrong with it."""
    row = logits[b, j]
    if bool(row.isnan().any()):
        what = "holds NaN"
    elif bool((row == math.inf).any()):
        what = "holds +inf"
    elif bool((row == -math.inf).all()):
        what = "has no finite logit (all -inf)"
    else:
        what = f"has a largest logit {float(row.max()):g} that overflows float32"
        if temperature > 0.0:
            what += f" when divided by temperature {temperature:g}"
    raise ValueError(
        f"{op}: {name} row (batch {b}, position {j}) {what}; logits may hold -inf for masked "
        "tokens, but no NaN or +inf, and every row needs a finite largest logit"
    )


def _check_logit_rows(op: str, name: str, logits: Tensor, temperature: float) -> None:
    """The contract's definition on a whole ``[B, P, V]`` logits tensor: raise for the first bad
    row in (batch, position) order. One max-reduction: it is NaN for a row with a NaN, and the
    rounding to float32 is monotone, so it is the float32 row's largest logit."""
    if logits.numel() == 0:
        return
    top = logits.amax(dim=-1).float() * _inv_temperature(temperature).to(logits.device)
    bad = ~torch.isfinite(top)
    if bool(bad.any()):
        b, j = (int(i) for i in bad.nonzero()[0])
        _raise_bad_row(op, name, logits, b, j, temperature)


def _raise_for_counts(
    op: str, counts: Tensor, k: int, target_logits: Tensor, draft_logits: Tensor | None,
    temperature: float,
) -> None:
    """Turn a kernel's report into the contract's ValueError: ``counts[b] = -1 - r`` says that
    row b's first bad row is target row r (r <= K), else draft row r - K - 1."""
    if counts.numel() == 0 or not bool((counts < 0).any()):
        return
    r = (-1 - counts).tolist()
    target_bad = [b for b, rb in enumerate(r) if 0 <= rb <= k]
    if target_bad:
        b = target_bad[0]
        _raise_bad_row(op, "target_logits", target_logits, b, r[b], temperature)
    b = next(b for b, rb in enumerate(r) if rb > k)
    _raise_bad_row(op, "draft_logits", draft_logits, b, r[b] - k - 1, temperature)


# --------------------------------------------------------------------------------------------
# References: plain torch, float32 math. The definition of each op.
# --------------------------------------------------------------------------------------------


def _warped_probs(logits: Tensor, temperature: float, threshold: Tensor | None) -> Tensor:
    """softmax(logits / T) over the kept tokens (float32), 0 elsewhere. logits: [V]."""
    s = logits.float() / temperature
    if threshold is not None:
        s = s.masked_fill(logits.float() < threshold, float("-inf"))
    return torch.exp(s - torch.logsumexp(s, dim=-1))


def _race(weights: Tensor, race_u: Tensor) -> int:
    """An index drawn with probability proportional to ``weights`` (>= 0): argmax w / E, with
    E = -log u ~ Exp(1). The first index wins ties. E is computed as 0 - log u so that u = 1 gives
    E = +0 and its token (if its weight is positive) wins with key +inf; a zero weight has key 0,
    never 0 / 0."""
    e = (0.0 - torch.log(race_u.double())).float()
    return int(torch.argmax(torch.where(weights > 0, weights / e, 0.0)))


def _accept_tokens_core(
    draft_tokens: Tensor,
    target_logits: Tensor,
    draft_logits: Tensor | None,
    temperature: float,
    target_thr: Tensor | None,
    draft_thr: Tensor | None,
    accept_u: Tensor | None,
    race_u: Tensor | None,
) -> tuple[Tensor, Tensor]:
    batch, k = draft_tokens.shape
    device = target_logits.device
    tokens = torch.full((batch, k + 1), -1, dtype=torch.int64, device=device)
    counts = torch.zeros(batch, dtype=torch.int64, device=device)
    for b in range(batch):
        for j in range(k + 1):
            logits = target_logits[b, j]
            if temperature == 0.0:  # greedy: keep the draft token while it is the argmax
                best = int(torch.argmax(logits.float()))
                if j == k or best != int(draft_tokens[b, j]):
                    tokens[b, j], counts[b] = best, j
                    break
                tokens[b, j] = best
                continue
            p = _warped_probs(logits, temperature, None if target_thr is None else target_thr[b, j])
            if j == k:  # all K accepted: a bonus token from p
                tokens[b, j], counts[b] = _race(p, race_u[b]), k
                break
            x = int(draft_tokens[b, j])
            if draft_logits is None:  # a deterministic draft: q is a point mass on x
                q = torch.zeros_like(p)
                q[x] = 1.0
            else:
                q = _warped_probs(
                    draft_logits[b, j], temperature, None if draft_thr is None else draft_thr[b, j]
                )
            # u < min(1, p/q)  <=>  u q < p  for u in (0, 1] (and q = 0 accepts any p > 0).
            if float(accept_u[b, j]) * float(q[x]) < float(p[x]):
                tokens[b, j] = x
                continue
            residual = (p - q).clamp(min=0.0)
            if not bool((residual > 0).any()):  # p <= q everywhere (rounding): use p
                residual = p
            tokens[b, j], counts[b] = _race(residual, race_u[b]), j
            break
    return tokens, counts


def accept_tokens_reference(
    draft_tokens: Tensor,
    target_logits: Tensor,
    draft_logits: Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    *,
    accept_uniforms: Tensor | None = None,
    race_uniforms: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The definition of :func:`accept_tokens` (a readable loop; uniforms required unless greedy).

    ``accept_uniforms: [B, K]`` and ``race_uniforms: [B, V]`` in (0, 1] float64: the accept test of
    row b, position j uses ``accept_uniforms[b, j]``; the single race of row b (the replacement
    or the bonus token) uses ``race_uniforms[b]``.
    """
    _check_logit_rows("accept_tokens_reference", "target_logits", target_logits, temperature)
    if draft_logits is not None:
        _check_logit_rows("accept_tokens_reference", "draft_logits", draft_logits, temperature)
    thr_t = thr_d = None
    if temperature > 0.0:
        thr_t = keep_thresholds(target_logits, temperature, top_k, top_p)
        if draft_logits is not None:
            thr_d = keep_thresholds(draft_logits, temperature, top_k, top_p)
    return _accept_tokens_core(
        draft_tokens,
        target_logits,
        draft_logits,
        temperature,
        thr_t,
        thr_d,
        accept_uniforms,
        race_uniforms,
    )


def _check_rewards(op: str, rewards: Tensor) -> None:
    # omega has a limit at +-inf for every kind (binary/clipping/sigmoid: 1 at +inf, 0 at -inf;
    # constant: delta), which every backend computes; a NaN reward has no meaning.
    nan = torch.isnan(rewards)
    if bool(nan.any()):
        i = int(nan.nonzero()[0, 0])
        raise ValueError(f"{op}: rewards[{i}] is NaN; rewards must not be NaN (+-inf are allowed)")


def step_weights_reference(
    rewards: Tensor, threshold: float, omega: str = "binary", sharpness: float = 10.0
) -> Tensor:
    """RSD's acceptance weight ``omega(r)`` per step, float64 (exact forms unconfirmed by the paper
    text; docs/speculative.md): binary ``1{r >= delta}``; constant ``delta``; clipping
    ``min(1, max(0, r / delta))``; sigmoid ``1 / (1 + exp(-sharpness (r - delta)))``."""
    r = rewards.double()
    if omega == "binary":
        return (r >= threshold).double()
    if omega == "constant":
        return torch.full_like(r, threshold)
    if omega == "clipping":
        return (r / threshold).clamp(0.0, 1.0)
    if omega == "sigmoid":
        return 1.0 / (1.0 + torch.exp(-sharpness * (r - threshold)))
    raise ValueError(f"unknown omega {omega!r}")


def accept_steps_reference(
    rewards: Tensor,
    threshold: float,
    omega: str = "binary",
    sharpness: float = 10.0,
    *,
    uniforms: Tensor,
) -> tuple[Tensor, Tensor]:
    """Accept step i iff ``uniforms[i] < omega(rewards[i])``; returns ``(accepted, weights)``.
    A NaN reward is a ValueError; +-inf rewards take omega's limits."""
    _check_rewards("accept_steps_reference", rewards)
    w = step_weights_reference(rewards, threshold, omega, sharpness)
    return uniforms.double() < w, w


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------


def _open_uniforms(shape: tuple[int, ...], gen: torch.Generator, device: torch.device) -> Tensor:
    # (0, 1]: never exactly 0, so -log u is finite.
    return 1.0 - torch.rand(shape, generator=gen, dtype=torch.float64, device=device)


def _accept_tokens_impl(
    draft_tokens: Tensor,
    target_logits: Tensor,
    draft_logits: Tensor | None,
    temperature: float,
    target_thr: Tensor | None,
    draft_thr: Tensor | None,
    accept_u: Tensor | None,
    race_u: Tensor | None,
    seeds: Tensor,
    per_row_seeds: bool,
    backend: str,
) -> tuple[Tensor, Tensor]:
    batch, k = draft_tokens.shape
    vocab = target_logits.shape[-1]
    device = target_logits.device
    if batch == 0:
        return (
            torch.empty((0, k + 1), dtype=torch.int64, device=device),
            torch.empty(0, dtype=torch.int64, device=device),
        )
    greedy = temperature == 0.0
    if backend == "torch":
        _check_logit_rows("accept_tokens", "target_logits", target_logits, temperature)
        if draft_logits is not None:
            _check_logit_rows("accept_tokens", "draft_logits", draft_logits, temperature)
        if accept_u is None and not greedy:
            accept_u = torch.empty((batch, k), dtype=torch.float64, device=device)
            race_u = torch.empty((batch, vocab), dtype=torch.float64, device=device)
            if per_row_seeds:
                for b in range(batch):  # each row its own stream: independent of the batch
                    gen = seeded_generator(int(seeds[b]), device)
                    accept_u[b] = _open_uniforms((k,), gen, device)
                    race_u[b] = _open_uniforms((vocab,), gen, device)
            else:
                gen = seeded_generator(int(seeds[0]), device)
                accept_u = _open_uniforms((batch, k), gen, device)
                race_u = _open_uniforms((batch, vocab), gen, device)
        return _accept_tokens_core(
            draft_tokens, target_logits, draft_logits, temperature, target_thr, draft_thr,
            accept_u, race_u,
        )
    tensors = [
        draft_tokens.contiguous(),
        target_logits.contiguous(),
        None if draft_logits is None else draft_logits.contiguous(),
        None if target_thr is None else target_thr.float().contiguous(),
        None if draft_thr is None else draft_thr.float().contiguous(),
        None if accept_u is None else accept_u.double().contiguous(),
        None if race_u is None else race_u.double().contiguous(),
        seeds.contiguous(),
    ]
    tokens = torch.empty((batch, k + 1), dtype=torch.int64, device=device)
    counts = torch.empty(batch, dtype=torch.int64, device=device)
    if backend == "triton":
        KERNELS.kernel("accept_tokens", backend)(
            tokens, counts, *tensors, temperature, per_row_seeds
        )
    else:
        if backend == "cuda":  # per-row statistics (log-sum-exp, argmax, contract): 16 bytes a row
            tensors.append(torch.empty(2 * batch * (2 * k + 1), dtype=torch.int64, device=device))
        code = _backend.DTYPE_CODES[target_logits.dtype]
        launch_native(
            backend, KERNELS.kernel("accept_tokens", backend), [tokens, counts, *tensors], batch,
            k, vocab, code, temperature, int(per_row_seeds),
        )
    _raise_for_counts("accept_tokens", counts, k, target_logits, draft_logits, temperature)
    return tokens, counts


_accept_tokens_op = torch.library.custom_op(
    "ponder::accept_tokens", _accept_tokens_impl, mutates_args=()
)


@_accept_tokens_op.register_fake
def _(draft_tokens, target_logits, draft_logits, temperature, target_thr, draft_thr, accept_u,
      race_u, seeds, per_row_seeds, backend):
    batch, k = draft_tokens.shape
    return (
        draft_tokens.new_empty((batch, k + 1)),
        draft_tokens.new_empty((batch,)),
    )


def _accept_steps_impl(
    rewards: Tensor,
    threshold: float,
    kind: int,
    sharpness: float,
    uniforms: Tensor | None,
    seed: int,
    backend: str,
) -> tuple[Tensor, Tensor]:
    n = rewards.shape[0]
    device = rewards.device
    if backend == "torch":
        if uniforms is None:
            uniforms = _open_uniforms((n,), seeded_generator(seed, device), device)
        acc, w = accept_steps_reference(
            rewards, threshold, OMEGAS[kind], sharpness, uniforms=uniforms
        )
        return acc, w.contiguous()
    r = rewards.double().contiguous()
    u = None if uniforms is None else uniforms.double().contiguous()
    accepted = torch.empty(n, dtype=torch.bool, device=device)
    weights = torch.empty(n, dtype=torch.float64, device=device)
    if n:
        if backend == "triton":
            KERNELS.kernel("accept_steps", backend)(
                accepted, weights, r, u, kind, threshold, sharpness, seed
            )
        else:
            launch_native(
                backend, KERNELS.kernel("accept_steps", backend), [accepted, weights, r, u], n,
                kind, threshold, sharpness, seed,
            )
    return accepted, weights


_accept_steps_op = torch.library.custom_op(
    "ponder::accept_steps", _accept_steps_impl, mutates_args=()
)


@_accept_steps_op.register_fake
def _(rewards, threshold, kind, sharpness, uniforms, seed, backend):
    n = rewards.shape[0]
    return (
        rewards.new_empty((n,), dtype=torch.bool),
        rewards.new_empty((n,), dtype=torch.float64),
    )


# --------------------------------------------------------------------------------------------
# Public API: validate, choose the backend, resolve the seeds, call the op.
# --------------------------------------------------------------------------------------------


def _check_uniforms(op: str, name: str, u: object, shape: tuple[int, ...], device) -> Tensor:
    u = check_tensor(
        op, name, u, dtype=(torch.float32, torch.float64), device=device, shape=shape
    )
    if u.numel() and not bool(((u > 0) & (u <= 1)).all()):
        raise ValueError(f"{op}: {name} must lie in (0, 1]")
    return u


def _row_seeds(op: str, generator: object, batch: int, device) -> tuple[Tensor, bool]:
    """([B] int64 seeds, per_row): per-row seeds from a tensor, else one seed for the batch."""
    if isinstance(generator, Tensor):
        check_tensor(op, "generator (per-row seeds)", generator, dtype=torch.int64, shape=(batch,))
        if batch and not bool(((generator >= 0) & (generator <= MAX_SEED)).all()):
            raise ValueError(f"{op}: per-row seeds must be in [0, 2**63)")
        return generator.to(device), True
    seed = resolve_seed(op, generator)
    return torch.full((batch,), seed, dtype=torch.int64, device=device), False


def accept_tokens(
    draft_tokens: Tensor,
    target_logits: Tensor,
    draft_logits: Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | int | Tensor | None = None,
    uniforms: tuple[Tensor, Tensor] | None = None,
    *,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Token-level speculative sampling: accept a prefix of each row's draft tokens, then append
    one token from the target (the replacement at the first rejection, or a bonus token).

    Lossless: each emitted token has exactly the target's (warped) distribution, provided the
    draft tokens were sampled from ``draft_logits`` warped the same way (same temperature, top-k,
    top-p). With ``draft_logits=None`` the draft is treated as deterministic (q is a point mass on
    each draft token: greedy or n-gram drafts). ``temperature=0`` is greedy: a draft token is kept
    while it equals the target's argmax, and the argmax is appended.

    Args:
        draft_tokens: ``[B, K]`` int64 token ids in ``[0, V)``, ``K >= 1``.
        target_logits: ``[B, K + 1, V]`` the target's logits at the K draft positions and one more
            (float32/64, float16, bfloat16).
        draft_logits: ``[B, K, V]`` the draft's logits (same dtype), or None.
        temperature: ``>= 0``; applied to both distributions.
        top_k: keep the ``top_k`` largest logits (ties kept), or None.
        top_p: then keep the smallest prefix of mass ``>= top_p`` (in (0, 1]), or None.
        generator: int seed, ``torch.Generator``, None (torch's default generator) or a ``[B]``
            int64 tensor of per-row seeds.
        uniforms: optional ``(accept [B, K], race [B, V])`` float uniforms in (0, 1] for an exact
            result (``accept[b, j]`` tests position j; ``race[b]`` draws row b's final token).
        backend: ``"cpu"``, ``"cuda"``, ``"triton"`` or ``"torch"``; default by device.

    Outputs are integers, so no gradient flows: logits that require grad are read as values,
    alike on every backend.

    Logits may hold ``-inf`` (a masked token, probability 0). NaN, ``+inf``, a row with no
    finite logit, or a largest logit that overflows float32 once divided by ``temperature`` are
    ValueErrors naming the tensor and the first bad (batch, position) row (target rows before
    draft rows), on every backend and whether or not the test reaches that row. The kernels
    check the rows in the max pass they already make, so the check costs only the reads of
    the rows after each row's first rejection.

    Returns:
        ``(tokens [B, K + 1] int64, accepted [B] int64)``: row b emits
        ``tokens[b, :accepted[b] + 1]`` (the kept draft tokens and one target token), padded with
        -1.
    """
    op = "accept_tokens"
    check_tensor(op, "draft_tokens", draft_tokens, dtype=torch.int64, ndim=2)
    batch, k = draft_tokens.shape
    if k < 1:
        raise ValueError(f"{op}: draft_tokens must hold K >= 1 tokens per row, got K = {k}")
    device = draft_tokens.device
    check_tensor(op, "target_logits", target_logits, dtype=LOGIT_DTYPES, device=device, ndim=3)
    vocab = target_logits.shape[-1]
    if tuple(target_logits.shape[:2]) != (batch, k + 1):
        raise ValueError(
            f"{op}: target_logits must be [B, K + 1, V] = [{batch}, {k + 1}, V], "
            f"got {tuple(target_logits.shape)}"
        )
    if vocab < 1:
        raise ValueError(f"{op}: target_logits has an empty vocabulary")
    if draft_logits is not None:
        check_tensor(
            op, "draft_logits", draft_logits, dtype=target_logits.dtype, device=device,
            shape=(batch, k, vocab),
        )
    t = check_real(op, "temperature", temperature, nonnegative=True)
    if top_k is not None:
        top_k = check_int(op, "top_k", top_k, minimum=1)
    if top_p is not None:
        top_p = check_probability(op, "top_p", top_p, zero=False)
    if draft_tokens.numel() and not bool(((draft_tokens >= 0) & (draft_tokens < vocab)).all()):
        raise ValueError(f"{op}: draft_tokens must be token ids in [0, {vocab})")
    name = choose_backend(op, KERNELS, target_logits, backend)
    accept_u = race_u = None
    if uniforms is not None:
        if generator is not None:
            raise ValueError(f"{op}: pass uniforms or generator, not both")
        if not (isinstance(uniforms, (tuple, list)) and len(uniforms) == 2):
            raise TypeError(f"{op}: uniforms must be a pair (accept [B, K], race [B, V])")
        accept_u = _check_uniforms(op, "uniforms[0] (accept)", uniforms[0], (batch, k), device)
        race_u = _check_uniforms(op, "uniforms[1] (race)", uniforms[1], (batch, vocab), device)
        seeds, per_row = torch.zeros(batch, dtype=torch.int64, device=device), False
    elif t == 0.0:
        seeds, per_row = torch.zeros(batch, dtype=torch.int64, device=device), False
    else:
        seeds, per_row = _row_seeds(op, generator, batch, device)
    thr_t = thr_d = None
    if t > 0.0:
        thr_t = keep_thresholds(target_logits, t, top_k, top_p)
        if draft_logits is not None:
            thr_d = keep_thresholds(draft_logits, t, top_k, top_p)
    return call_op(
        torch.ops.ponder.accept_tokens,
        _accept_tokens_impl,
        draft_tokens,
        target_logits,
        draft_logits,
        t,
        thr_t,
        thr_d,
        accept_u,
        race_u,
        seeds,
        per_row,
        name,
    )


def accept_steps(
    rewards: Tensor,
    threshold: float,
    omega: str = "binary",
    generator: torch.Generator | int | None = None,
    *,
    sharpness: float = 10.0,
    uniforms: Tensor | None = None,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """RSD's step acceptance for a batch: keep draft step i with probability ``omega(r_i)``.

    ``omega`` (exact forms unconfirmed; docs/speculative.md): ``"binary"`` ``1{r >= delta}`` (the paper's
    best and default; deterministic), ``"constant"`` ``delta``, ``"clipping"``
    ``min(1, max(0, r / delta))``, ``"sigmoid"`` ``1 / (1 + exp(-sharpness (r - delta)))``.

    Args:
        rewards: ``[N]`` float PRM scores of the draft steps (in [0, 1] for a PRM). NaN is a
            ValueError; ``+inf`` / ``-inf`` take omega's limits (1 / 0; ``delta`` for
            ``"constant"``), the same on every backend.
        threshold: ``delta`` (finite; ``omega="clipping"`` needs ``delta > 0``).
        omega: one of :data:`OMEGAS`.
        generator: int seed, ``torch.Generator`` or None.
        sharpness: the sigmoid's slope (> 0).
        uniforms: optional ``[N]`` uniforms in (0, 1] (exact path).
        backend: as in :func:`accept_tokens`.

    Returns:
        ``(accepted [N] bool, weights [N] float64)``.
    """
    op = "accept_steps"
    check_tensor(op, "rewards", rewards, dtype=LOGIT_DTYPES, ndim=1)
    delta = check_real(op, "threshold", threshold)
    if omega not in OMEGAS:
        raise ValueError(f"{op}: omega must be one of {OMEGAS}, got {omega!r}")
    if omega == "clipping" and delta <= 0:
        raise ValueError(f"{op}: omega='clipping' needs threshold > 0, got {delta}")
    s = check_real(op, "sharpness", sharpness, positive=True)
    refuse_grad(op, "a sampling decision: its weights are not differentiated", rewards=rewards)
    _check_rewards(op, rewards)
    # The kernels read rewards as float64: any dtype runs on any backend.
    name = _backend.resolve(op, rewards.device, backend, KERNELS)
    if uniforms is not None:
        if generator is not None:
            raise ValueError(f"{op}: pass uniforms or generator, not both")
        _check_uniforms(op, "uniforms", uniforms, tuple(rewards.shape), rewards.device)
        seed = 0
    else:
        seed = resolve_seed(op, generator)
    return call_op(
        torch.ops.ponder.accept_steps,
        _accept_steps_impl,
        rewards,
        delta,
        OMEGAS.index(omega),
        s,
        uniforms,
        seed,
        name,
    )
