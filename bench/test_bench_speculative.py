"""Benchmarks of speculative sampling's acceptance test (ponder.ops.speculative.accept_tokens).

Workload (the target's, docs/benchmarks.md): B=32 rows, K=8 draft tokens, V=128256 (Llama-3
vocabulary), fp32 target logits [B, K+1, V] and draft logits [B, K, V], temperature 0.8. Draft
logits are the target's plus N(0, 0.5^2) noise and the draft tokens are sampled from them, so
most rows accept most tokens (the measured mean acceptance is recorded) and most logit rows are
read.

Implementations (``extra_info["impl"]``):
  ponder-cpu    the C++ kernel, uniforms drawn in-kernel (``generator=SEED``);
  eager-torch   the same math written in eager torch: two softmaxes over [B, K(+1), V], gathers,
                the first-rejection index, the residual row and torch.multinomial.

Bytes (``extra_info["bytes"]``): the logits rows the kernel must read (every target row up to and
including each row's final position, and the draft rows before it), counted once; the copy probe
measures this machine's copy bandwidth (read + write of 512 MiB) in the same run.
"""

from __future__ import annotations

import pytest
import torch
from ponder.ops import speculative as S
from torch import Tensor

SEED = 1234
B, K, V = 32, 8, 128256
TEMPERATURE = 0.8
CPU = torch.device("cpu")
COPY_BYTES = 512 * 2**20


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(0)
    target = 3.0 * torch.randn(B, K + 1, V, generator=gen)
    draft = target[:, :K] + 0.5 * torch.randn(B, K, V, generator=gen)
    probs = torch.softmax(draft.reshape(-1, V) / TEMPERATURE, -1)
    tokens = torch.multinomial(probs, 1, generator=gen).reshape(B, K)
    del probs
    return tokens, target, draft


def eager_accept(tokens: Tensor, target: Tensor, draft: Tensor, t: float) -> tuple[Tensor, Tensor]:
    """Speculative sampling in eager torch, as a user would write it."""
    p = torch.softmax(target / t, dim=-1)  # [B, K+1, V]
    q = torch.softmax(draft / t, dim=-1)  # [B, K, V]
    px = p[:, :-1].gather(-1, tokens[..., None]).squeeze(-1)
    qx = q.gather(-1, tokens[..., None]).squeeze(-1)
    u = 1.0 - torch.rand(tokens.shape, dtype=torch.float64)
    ok = (u * qx.double()) < px.double()
    n = ok.long().cumprod(-1).sum(-1)  # accepted count per row
    rows = torch.arange(tokens.shape[0])
    p_final = p[rows, n]  # [B, V]
    q_final = torch.where((n < tokens.shape[1])[:, None], q[rows, n.clamp(max=tokens.shape[1] - 1)],
                          torch.zeros_like(p_final))
    residual = (p_final - q_final).clamp(min=0)
    final = torch.multinomial(residual, 1).squeeze(-1)
    out = torch.where(torch.arange(K + 1)[None] < n[:, None],
                      torch.cat([tokens, tokens[:, :1]], 1), -1)
    out[rows, n] = final
    return out, n


def _bytes_read(n: Tensor) -> int:
    """Logit bytes a one-read kernel needs: target rows 0..n_b and draft rows 0..min(n_b, K-1)."""
    rows_t = int((n + 1).sum())
    rows_d = int(torch.clamp(n + 1, max=K).sum())
    return (rows_t + rows_d) * V * 4


def test_accept_tokens_ponder_cpu(measure, inputs):
    tokens, target, draft = inputs
    _, n = S.accept_tokens(tokens, target, draft, TEMPERATURE, generator=SEED, backend="cpu")
    measure(lambda: S.accept_tokens(tokens, target, draft, TEMPERATURE, generator=SEED,
                                    backend="cpu"),
            device=CPU, group="accept_tokens B32 K8 V128256 fp32", kind="kernel",
            op="accept_tokens", impl="ponder-cpu", shape=[B, K, V], dtype="float32",
            bytes=_bytes_read(n), mean_accepted=float(n.double().mean()))


def test_accept_tokens_eager_torch(measure, inputs):
    tokens, target, draft = inputs
    torch.manual_seed(SEED)
    _, n = eager_accept(tokens, target, draft, TEMPERATURE)
    measure(lambda: eager_accept(tokens, target, draft, TEMPERATURE),
            device=CPU, group="accept_tokens B32 K8 V128256 fp32", kind="kernel",
            op="accept_tokens", impl="eager-torch", shape=[B, K, V], dtype="float32",
            bytes=_bytes_read(n), mean_accepted=float(n.double().mean()))


def test_copy_bandwidth(measure):
    src = torch.empty(COPY_BYTES // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    measure(lambda: dst.copy_(src), device=CPU, group="copy probe", kind="copy", op="copy",
            impl="torch", bytes=2 * COPY_BYTES, dtype="float32")
