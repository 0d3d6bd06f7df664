"""Gradients through the public ops: the same on every backend.

The Langevin steps are affine in their tensor inputs: their backward is checked with fp64
``gradcheck`` on each backend. The ThinK ops differentiate their reference: each backend's
gradients must equal autograd through the reference. ``accept_steps`` (a sampling decision) refuses
inputs that require grad, on every backend, before any kernel runs; ``accept_tokens`` returns
integers. ``nn.Parameter`` inputs work end to end (Langevin, ThinK, the PRM head). opcheck runs
with inputs that require grad, so its autograd checks run too. (PRM scoring has its own gradient
tests in test_prm.py.)
"""

from __future__ import annotations

import pytest
import torch
from ponder.ops import langevin as L
from ponder.ops import prm
from ponder.ops import speculative as S
from ponder.ops import think as T


def _f64(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()


LANGEVIN_CASES = {
    "ula_step": (lambda b: (_f64(5, 3), _f64(5, 3, seed=1), _f64(5, 3, seed=2)),
                 lambda b, x, g, n: L.ula_step(x, g, 0.1, temperature=0.5, noise=n, backend=b)),
    "mala_propose": (lambda b: (_f64(5, 3), _f64(5, 3, seed=1), _f64(5, 3, seed=2)),
                     lambda b, x, g, n: L.mala_propose(x, g, 0.1, noise=n, backend=b)),
    "proximal_step": (lambda b: (_f64(5, 3), _f64(5, 3, seed=1), _f64(5, 3, seed=2),
                                 _f64(5, 3, seed=3)),
                      lambda b, z, y, g, n: L.proximal_step(z, y, g, 0.1, 2.0, noise=n,
                                                            backend=b)),
    "uld_step": (lambda b: (_f64(5, 3), _f64(5, 3, seed=1), _f64(5, 3, seed=2),
                            _f64(2, 5, 3, seed=3)),
                 lambda b, x, v, g, n: L.uld_step(x, v, g, 0.1, 0.7, noise=n, backend=b)),
}


@pytest.mark.parametrize("op", sorted(LANGEVIN_CASES))
def test_langevin_steps_gradcheck(op, cpu_backend):
    make, call = LANGEVIN_CASES[op]
    inputs = make(cpu_backend)
    assert torch.autograd.gradcheck(lambda *a: call(cpu_backend, *a), inputs)


def test_mala_accept_gradcheck_routes_gradients_to_the_chosen_side(cpu_backend):
    x, g, xp, gp = (_f64(6, 3, seed=s) for s in range(4))
    lp, lpp = _f64(6, seed=4), _f64(6, seed=5)
    u = torch.linspace(0.05, 0.95, 6, dtype=torch.float64)

    def call(*a):
        return L.mala_accept(*a, 0.3, uniforms=u, backend=cpu_backend)[:3]

    args = (x, lp, g, xp, lpp, gp)
    assert torch.autograd.gradcheck(call, args)
    accepted = L.mala_accept(*args, 0.3, uniforms=u, backend=cpu_backend)[3]
    assert 0 < int(accepted.sum()) < 6  # both sides exercised
    x_out = call(*args)[0]
    gx, gxp = torch.autograd.grad(x_out.sum(), (x, xp))
    assert torch.equal(gxp[:, 0] == 1, accepted) and torch.equal(gx[:, 0] == 1, ~accepted)


def test_langevin_parameter_inputs_train(cpu_backend):
    # An nn.Parameter through a step: backward works (it used to fail with "no autograd formula").
    p = torch.nn.Parameter(torch.randn(4, 2))
    out = L.ula_step(p, torch.randn(4, 2), 0.1, generator=0, backend=cpu_backend)
    out.square().sum().backward()
    torch.testing.assert_close(p.grad, 2 * out.detach())


def _attention_inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    b, hq, hkv, s, d, lp, lr, dv, kept = 2, 4, 2, 2, 8, 5, 3, 6, 5
    idx = torch.stack([torch.randperm(d, generator=g)[:kept].sort().values
                       for _ in range(b * hkv)]).reshape(b, hkv, kept)
    q = torch.randn(b, hq, s, d, generator=g).to(dtype)
    kp = torch.randn(b, hkv, lp, kept, generator=g).to(dtype)
    kr = torch.randn(b, hkv, lr, d, generator=g).to(dtype)
    v = torch.randn(b, hkv, lp + lr, dv, generator=g).to(dtype)
    return q, kp, idx, kr, v


def _grads(fn, tensors):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    out = out if isinstance(out, tuple) else (out,)
    weights = [torch.randn(o.shape, generator=torch.Generator().manual_seed(i), dtype=o.dtype)
               for i, o in enumerate(out)]
    sum(((o.float() * w.float()).sum() for o, w in zip(out, weights))).backward()
    return [t.grad for t in leaves]


def test_pruned_decode_attention_gradients_equal_the_reference(cpu_backend):
    q, kp, idx, kr, v = _attention_inputs()
    lengths = torch.tensor([8, 6])

    def op(q, kp, kr, v):
        return T.pruned_decode_attention(q, kp, idx, kr, v, lengths, return_lse=True,
                                         backend=cpu_backend)

    def ref(q, kp, kr, v):
        return T.pruned_decode_attention_reference(q, kp, idx, kr, v, lengths, 8 ** -0.5)

    for got, want in zip(_grads(op, (q, kp, kr, v)), _grads(ref, (q, kp, kr, v))):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_channel_scores_and_compact_keys_gradients_equal_the_reference(cpu_backend):
    q, _kp, idx, kr, _v = _attention_inputs()
    got = _grads(lambda q, k: T.channel_scores(q, k, backend=cpu_backend), (q, kr))
    want = _grads(T.channel_scores_reference, (q, kr))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    got = _grads(lambda k: T.compact_keys(k, idx), (kr,))
    want = _grads(lambda k: T.compact_keys_reference(k, idx), (kr,))
    torch.testing.assert_close(got[0], want[0])


def test_accept_steps_refuses_rewards_that_require_grad(cpu_backend):
    rewards = torch.rand(5, requires_grad=True)
    with pytest.raises(TypeError, match="rewards requires grad"):
        S.accept_steps(rewards, 0.5, "sigmoid", generator=0, backend=cpu_backend)
    with torch.no_grad():
        S.accept_steps(rewards, 0.5, "sigmoid", generator=0, backend=cpu_backend)
    S.accept_steps(rewards.detach(), 0.5, "sigmoid", generator=0, backend=cpu_backend)


def test_accept_tokens_reads_logits_that_require_grad_as_values(cpu_backend):
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 3, 11, generator=g, requires_grad=True)
    tokens = torch.randint(0, 11, (2, 2), generator=g)
    out, n = S.accept_tokens(tokens, target, None, 0.0, backend=cpu_backend)
    ref, ref_n = S.accept_tokens_reference(tokens, target.detach(), None, 0.0)
    assert torch.equal(out, ref) and torch.equal(n, ref_n) and not out.requires_grad


def _leaf(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_()


def _langevin_op_args(name, backend):
    """torch.ops.ponder.<name>'s positional arguments, every float tensor requiring grad."""
    t = [_leaf(4, 5, seed=s) for s in range(6)]
    if name == "ula_step":
        return (t[0], t[1], 0.1, 0.5, t[2], 3, backend)
    if name == "mala_propose":
        return (t[0], t[1], 0.1, t[2], 3, backend)
    if name == "proximal_step":
        return (t[0], t[1], t[2], 0.1, 2.0, t[3], 3, backend)
    if name == "uld_step":
        return (t[0], t[1], t[2], 0.1, 0.7, _leaf(2, 4, 5, seed=9), 3, backend)
    lp, lpp = _leaf(4, seed=7), _leaf(4, seed=8)
    u = torch.linspace(0.1, 0.9, 4, dtype=torch.float64)
    return (t[0], lp, t[1], t[2], lpp, t[3], 0.3, u, 3, backend)


@pytest.mark.parametrize("name", ["ula_step", "mala_propose", "proximal_step", "uld_step",
                                  "mala_accept"])
def test_opcheck_langevin_with_inputs_that_require_grad(name, cpu_backend):
    # With inputs that require grad, opcheck also runs its autograd-registration and
    # AOT-dispatch (forward + backward) tests, which plain inputs skip.
    torch.library.opcheck(getattr(torch.ops.ponder, name).default,
                          _langevin_op_args(name, cpu_backend))


def test_opcheck_think_with_inputs_that_require_grad(cpu_backend):
    q, kp, idx, kr, v = (t.requires_grad_() if t.is_floating_point() else t
                         for t in _attention_inputs())
    lengths = torch.tensor([8, 6])
    torch.library.opcheck(torch.ops.ponder.pruned_decode_attention.default,
                          (q, kp, idx, kr, v, lengths, None, 8 ** -0.5, cpu_backend))
    torch.library.opcheck(torch.ops.ponder.channel_scores.default, (q, kr, cpu_backend))
    torch.library.opcheck(torch.ops.ponder.compact_keys.default, (kr, idx))


@pytest.mark.parametrize("op", sorted(LANGEVIN_CASES))
def test_langevin_gradients_are_equal_across_backends(op, cpu_backend):
    # The backward is the op's, not a backend's: the same numbers on every backend.
    make, call = LANGEVIN_CASES[op]
    got = _grads(lambda *a: call(cpu_backend, *a), make(cpu_backend))
    want = _grads(lambda *a: call("torch", *a), make("torch"))
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
        assert a is not None and torch.equal(a, b)


def test_think_parameter_inputs_train(cpu_backend):
    # nn.Parameter queries and keys (a fine-tuned projection's output is one) through ThinK's
    # attention: backward works on every backend and matches the reference.
    q, kp, idx, kr, v = _attention_inputs()
    lengths = torch.tensor([8, 6])
    pq, pkr = torch.nn.Parameter(q.clone()), torch.nn.Parameter(kr.clone())
    out, _lse = T.pruned_decode_attention(pq, kp, idx, pkr, v, lengths, return_lse=True,
                                          backend=cpu_backend)
    out.square().sum().backward()
    rq, rkr = q.clone().requires_grad_(), kr.clone().requires_grad_()
    ref, _ = T.pruned_decode_attention_reference(rq, kp, idx, rkr, v, lengths, 8 ** -0.5)
    ref.square().sum().backward()
    torch.testing.assert_close(pq.grad, rq.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pkr.grad, rkr.grad, atol=1e-5, rtol=1e-5)
    ps = torch.nn.Parameter(q.clone())
    T.channel_scores(ps, kr, backend=cpu_backend).sum().backward()
    assert ps.grad is not None and ps.grad.shape == q.shape


def test_accept_steps_refuses_a_parameter(cpu_backend):
    with pytest.raises(TypeError, match="rewards requires grad"):
        S.accept_steps(torch.nn.Parameter(torch.rand(4)), 0.5, generator=0, backend=cpu_backend)


def test_prm_parameter_head_trains(cpu_backend):
    # The PRM training path: an nn.Parameter head (and bias) through score_steps on every
    # backend, with the reference's gradients.
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 7, 6, generator=g)
    idx = torch.tensor([[1, 4, -1], [2, 3, 6]])
    head0, bias0 = torch.randn(2, 6, generator=g), torch.randn(2, generator=g)
    grads = []
    for fn in (lambda h, b: prm.score_steps(hidden, idx, h, b, backend=cpu_backend),
               lambda h, b: prm.score_steps_reference(hidden, idx, h, b)):
        head, bias = torch.nn.Parameter(head0.clone()), torch.nn.Parameter(bias0.clone())
        out = fn(head, bias)
        (out.scores.nan_to_num().sum() + out.mean.sum()).backward()
        grads.append((head.grad, bias.grad))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
