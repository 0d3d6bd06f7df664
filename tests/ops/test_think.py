"""ponder.ops.think: every op against its *_reference, on every backend that runs here.

The attention op is also checked against torch's own scaled_dot_product_attention on the full
cache with nothing pruned (T = D), by the flash-attention rule (docs/design.md): in low precision its
error against a float32 SDPA must be at most twice that of SDPA run in the low precision itself.
"""

from __future__ import annotations

import math

import ponder
import pytest
import torch
import torch.nn.functional as F
from ponder import _backend
from ponder.ops import think as T
from ponder.ops._common import buffer_args

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]


def _skip_unsupported(backend: str, dtype: torch.dtype) -> None:
    if backend == "triton" and dtype == torch.bfloat16 and _backend.triton_interpreted():
        pytest.skip("the Triton interpreter has no bfloat16")


def assert_close_to_reference(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Kernels and reference both accumulate in float32 and round once: float32 agrees to
    float32 rounding of sums over up to ~1000 terms; float16/bfloat16 outputs are the same or
    an adjacent value (2 ulp of the output dtype, plus a little slack near 0)."""
    assert out.dtype == ref.dtype and out.shape == ref.shape
    if ref.dtype == torch.float32:
        torch.testing.assert_close(out, ref, rtol=2e-5, atol=2e-6)
        return
    mag = ref.abs()
    ulp = (torch.nextafter(mag, torch.full_like(mag, math.inf)) - mag).double()
    diff = (out.double() - ref.double()).abs()
    assert bool((diff <= 2 * ulp + 1e-5).all()), f"max diff {diff.max().item():.3g}"


def assert_lse_close(lse: torch.Tensor, ref: torch.Tensor) -> None:
    assert lse.dtype == torch.float32 and lse.shape == ref.shape
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref))
    finite = torch.isfinite(ref)
    torch.testing.assert_close(lse[finite], ref[finite], rtol=1e-5, atol=1e-5)


def make_inputs(batch, hq, hkv, s_len, dim, kept, lp, lr, dv, dtype, seed=0):
    """Random q, compact keys with random sorted channels, recent keys and values."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, hq, s_len, dim, generator=gen).to(dtype)
    k_pruned = torch.randn(batch, hkv, lp, kept, generator=gen).to(dtype)
    k_recent = torch.randn(batch, hkv, lr, dim, generator=gen).to(dtype)
    v = torch.randn(batch, hkv, lp + lr, dv, generator=gen).to(dtype)
    idx = torch.stack(
        [torch.randperm(dim, generator=gen)[:kept].sort().values for _ in range(batch * hkv)]
    ).view(batch, hkv, kept) if batch * hkv else torch.zeros(batch, hkv, kept, dtype=torch.long)
    return q, k_pruned, idx, k_recent, v


def padding(batch, length, seed=1):
    """Left padding (starts) and right padding (lengths) of a few positions per row."""
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, 4, (batch,), generator=gen)
    lengths = (length - torch.randint(0, 3, (batch,), generator=gen)).clamp_min(starts)
    return starts.clamp_max(length), lengths.clamp(0, length)


# (B, Hq, Hkv, S, D, T, Lp, Lr, Dv): GQA ratios 1 and 4 (and 3), S in {1, 3}, odd sizes, a
# pruned store spanning several CPU chunks (512 keys) and Triton splits (64 keys).
CASES = [
    (1, 1, 1, 1, 1, 1, 1, 0, 1),
    (2, 4, 1, 1, 7, 3, 97, 1, 7),
    (1, 4, 4, 3, 16, 16, 5, 7, 16),
    (3, 6, 2, 3, 33, 20, 1025, 5, 40),
    (1, 8, 2, 1, 128, 77, 600, 32, 128),
]
CASE_IDS = ["x".join(map(str, c)) for c in CASES]


@pytest.mark.parametrize("masked", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_attention_matches_reference(cpu_backend, dtype, case, masked):
    _skip_unsupported(cpu_backend, dtype)
    batch, hq, hkv, s_len, dim, kept, lp, lr, dv = case
    if cpu_backend == "triton" and lp > 200 and dtype != torch.float32:
        pytest.skip("the interpreter is slow: the long cases run in float32 only")
    q, kp, idx, kr, v = make_inputs(batch, hq, hkv, s_len, dim, kept, lp, lr, dv, dtype)
    starts, lengths = padding(batch, lp + lr) if masked else (None, None)
    out, lse = T.pruned_decode_attention(
        q, kp, idx, kr, v, lengths, return_lse=True, starts=starts, backend=cpu_backend
    )
    ref, ref_lse = T.pruned_decode_attention_reference(q, kp, idx, kr, v, lengths, None, starts)
    assert out.is_contiguous()
    assert_close_to_reference(out, ref)
    assert_lse_close(lse, ref_lse)


def _sdpa_mask(batch, s_len, length, starts, lengths):
    pos = torch.arange(length)
    start = torch.zeros(batch, dtype=torch.long) if starts is None else starts
    end = torch.full((batch,), length) if lengths is None else lengths
    q_pos = end[:, None] - s_len + torch.arange(s_len)[None, :]
    return ((pos >= start[:, None, None]) & (pos <= q_pos[:, :, None]))[:, None]  # [B, 1, S, L]


@pytest.mark.parametrize("s_len", [1, 3])
@pytest.mark.parametrize("group", [1, 4])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_nothing_pruned_equals_sdpa(cpu_backend, dtype, group, s_len):
    """T = D: the op is attention over the whole cache. In float32 it matches SDPA to rounding;
    in float16/bfloat16 its error is at most twice SDPA's own (flash-attention rule)."""
    _skip_unsupported(cpu_backend, dtype)
    batch, hkv, dim, lp, lr = 2, 2, 64, 150, 9
    q, _, _, kr_all, v = make_inputs(batch, hkv * group, hkv, s_len, dim, dim, 0, lp + lr, dim,
                                     dtype, seed=3)
    idx = torch.arange(dim).expand(batch, hkv, dim)
    starts, lengths = torch.tensor([0, 5]), torch.tensor([lp + lr, lp + lr - 2])
    out = T.pruned_decode_attention(q, kr_all[:, :, :lp], idx, kr_all[:, :, lp:], v, lengths,
                                    starts=starts, backend=cpu_backend)
    mask = _sdpa_mask(batch, s_len, lp + lr, starts, lengths)
    ref = F.scaled_dot_product_attention(q.float(), kr_all.float(), v.float(), attn_mask=mask,
                                         enable_gqa=True)
    if dtype == torch.float32:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        return
    lowp = F.scaled_dot_product_attention(q, kr_all, v, attn_mask=mask, enable_gqa=True)
    ours_err = (out.float() - ref).abs().max().item()
    torch_err = (lowp.float() - ref).abs().max().item()
    assert ours_err <= 2 * torch_err + 1e-6, (ours_err, torch_err)


def test_default_scale_uses_full_head_dim():
    q, kp, idx, kr, v = make_inputs(1, 2, 1, 1, 16, 5, 20, 3, 16, torch.float32)
    out = T.pruned_decode_attention(q, kp, idx, kr, v, backend="cpu")
    explicit = T.pruned_decode_attention(q, kp, idx, kr, v, scale=0.25, backend="cpu")
    other = T.pruned_decode_attention(q, kp, idx, kr, v, scale=1 / math.sqrt(5), backend="cpu")
    torch.testing.assert_close(out, explicit, rtol=0, atol=0)
    assert not torch.allclose(out, other)


def test_row_that_sees_nothing_is_zero(cpu_backend):
    """S = 3 queries at the end of a row of 2 valid keys: the first query sees no key."""
    q, kp, idx, kr, v = make_inputs(2, 2, 1, 3, 8, 4, 3, 2, 8, torch.float32)
    starts, lengths = torch.tensor([0, 3]), torch.tensor([5, 5])
    out, lse = T.pruned_decode_attention(q, kp, idx, kr, v, lengths, return_lse=True,
                                         starts=starts, backend=cpu_backend)
    assert torch.equal(out[1, :, 0], torch.zeros_like(out[1, :, 0]))
    assert bool(torch.isneginf(lse[1, :, 0]).all())
    assert bool(torch.isfinite(lse[0]).all()) and bool(torch.isfinite(lse[1, :, 1:]).all())


def test_lse_merges_split_caches(cpu_backend):
    """Attention over [A ; B] equals the lse-weighted merge of attention over A and over B."""
    q, kp, idx, kr, v = make_inputs(1, 4, 2, 1, 16, 10, 40, 8, 16, torch.float32, seed=5)
    full, lse = T.pruned_decode_attention(q, kp, idx, kr, v, return_lse=True, backend=cpu_backend)
    empty_r = kr[:, :, :0]
    a, lse_a = T.pruned_decode_attention(q, kp, idx, empty_r, v[:, :, :40], return_lse=True,
                                         backend=cpu_backend)
    b, lse_b = T.pruned_decode_attention(q, kp[:, :, :0], idx, kr, v[:, :, 40:],
                                         return_lse=True, backend=cpu_backend)
    total = torch.logaddexp(lse_a, lse_b)
    merged = a * (lse_a - total).exp()[..., None] + b * (lse_b - total).exp()[..., None]
    torch.testing.assert_close(lse, total, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full, merged, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("where", ["k_pruned", "v"])
def test_nan_propagates(cpu_backend, where):
    """A NaN key or value makes the outputs that attend to it NaN, as in torch, never zeros."""
    q, kp, idx, kr, v = make_inputs(2, 4, 2, 1, 8, 5, 1100, 3, 8, torch.float32)
    (kp if where == "k_pruned" else v)[0, 1, 700, 0] = float("nan")
    out, lse = T.pruned_decode_attention(q, kp, idx, kr, v, return_lse=True, backend=cpu_backend)
    ref, ref_lse = T.pruned_decode_attention_reference(q, kp, idx, kr, v)
    # KV head 1 of row 0 serves query heads 2 and 3; a NaN value poisons its channel 0 only.
    poisoned = out[0, 2:] if where == "k_pruned" else out[0, 2:, :, 0]
    assert bool(torch.isnan(poisoned).all())
    assert bool(torch.isfinite(out[0, :2]).all()) and bool(torch.isfinite(out[1]).all())
    torch.testing.assert_close(out, ref, rtol=2e-5, atol=2e-6, equal_nan=True)
    assert torch.equal(torch.isnan(lse), torch.isnan(ref_lse))


def test_non_contiguous_inputs(cpu_backend):
    """q from a [B, S, H, D] layout, keys/values as slices of preallocated cache buffers, a
    column-strided compact store: the same result as contiguous copies."""
    batch, hq, hkv, s_len, dim, kept, lp, lr = 2, 4, 2, 3, 16, 9, 70, 6
    q, kp, idx, kr, v = make_inputs(batch, hq, hkv, s_len, dim, kept, lp, lr, dim, torch.float32)
    q_nc = q.transpose(1, 2).contiguous().transpose(1, 2)
    kr_buf = torch.zeros(batch, hkv, lr + 10, dim)
    kr_buf[:, :, :lr] = kr
    v_buf = torch.zeros(batch, hkv, lp + lr + 10, dim)
    v_buf[:, :, : lp + lr] = v
    kp_buf = torch.zeros(batch, hkv, lp, 2 * kept)
    kp_buf[..., ::2] = kp
    idx_nc = idx.transpose(0, 1).contiguous().transpose(0, 1)
    args = (q_nc, kp_buf[..., ::2], idx_nc, kr_buf[:, :, :lr], v_buf[:, :, : lp + lr])
    assert not any(t.is_contiguous() for t in args)
    out = T.pruned_decode_attention(*args, backend=cpu_backend)
    ref, _ = T.pruned_decode_attention_reference(q, kp, idx, kr, v)
    assert_close_to_reference(out, ref)


@pytest.mark.parametrize(
    "case",
    [(0, 4, 2, 1, 8, 4, 5, 2), (2, 4, 2, 0, 8, 4, 5, 2), (2, 4, 2, 1, 8, 4, 0, 0),
     (2, 4, 2, 1, 8, 0, 5, 2)],
    ids=["B=0", "S=0", "L=0", "T=0"],
)
def test_empty_inputs(cpu_backend, case):
    batch, hq, hkv, s_len, dim, kept, lp, lr = case
    q, kp, idx, kr, v = make_inputs(batch, hq, hkv, s_len, dim, kept, lp, lr, dim, torch.float32)
    out, lse = T.pruned_decode_attention(q, kp, idx, kr, v, return_lse=True, backend=cpu_backend)
    ref, ref_lse = T.pruned_decode_attention_reference(q, kp, idx, kr, v)
    assert out.shape == (batch, hq, s_len, dim)
    assert_close_to_reference(out, ref)
    assert_lse_close(lse, ref_lse)


def test_cpu_result_does_not_depend_on_threads(restore_threads):
    q, kp, idx, kr, v = make_inputs(2, 8, 2, 2, 32, 20, 1500, 20, 32, torch.bfloat16)
    torch.set_num_threads(1)
    one = T.pruned_decode_attention(q, kp, idx, kr, v, backend="cpu", return_lse=True)
    torch.set_num_threads(2)
    two = T.pruned_decode_attention(q, kp, idx, kr, v, backend="cpu", return_lse=True)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


# --------------------------------------------------------------------------------------------
# channel_scores, select_channels, compact_keys, kept_channels
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [(1, 1, 1, 1, 1, 1), (2, 8, 2, 5, 1100, 24), (1, 4, 4, 32, 97, 7)],
                         ids=["1", "gqa4", "gqa1"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_channel_scores_match_reference(cpu_backend, dtype, case):
    _skip_unsupported(cpu_backend, dtype)
    batch, hq, hkv, window, length, dim = case
    gen = torch.Generator().manual_seed(7)
    qw = torch.randn(batch, hq, window, dim, generator=gen).to(dtype)
    k = torch.randn(batch, hkv, length, dim, generator=gen).to(dtype)
    out = T.channel_scores(qw.transpose(1, 2).contiguous().transpose(1, 2), k, backend=cpu_backend)
    ref = T.channel_scores_reference(qw, k)
    assert out.dtype == torch.float32 and out.shape == (batch, hkv, dim)
    torch.testing.assert_close(out, ref, rtol=2e-5, atol=0)


def test_channel_scores_definition():
    """A hand-computed case: one KV head, two query heads in its group."""
    qw = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # [1, 2, 1, 2]
    k = torch.tensor([[[[1.0, 1.0], [3.0, 0.0]]]])  # [1, 1, 2, 2]
    # q term: mean over the group of q^2 = [(1 + 9) / 2, (4 + 0) / 2]; k term: [(1 + 9) / 2, 1/2]
    want = torch.tensor([[[5.0 * 5.0, 2.0 * 0.5]]])
    for backend in ("torch", "cpu"):
        torch.testing.assert_close(T.channel_scores(qw, k, backend=backend), want)


def test_select_channels():
    scores = torch.tensor([[[0.5, 3.0, 1.0, 3.0, -1.0, 2.0]]])
    idx = T.select_channels(scores, 3)
    assert idx.dtype == torch.int64
    assert idx.tolist() == [[[1, 3, 5]]]
    # A tie at the cut goes to the lower channel.
    assert T.select_channels(scores, 1).tolist() == [[[1]]]
    assert T.select_channels(scores, 0).shape == (1, 1, 0)
    assert T.select_channels(scores, 6).tolist() == [[[0, 1, 2, 3, 4, 5]]]


def test_select_channels_random_against_topk():
    scores = torch.rand(3, 4, 97, generator=torch.Generator().manual_seed(2))
    idx = T.select_channels(scores, 58)
    assert bool((idx[..., 1:] > idx[..., :-1]).all())
    want = torch.topk(scores, 58, dim=-1).indices.sort(dim=-1).values
    assert torch.equal(idx, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_compact_keys(dtype):
    k = torch.randn(2, 3, 11, 16).to(dtype)
    idx = T.select_channels(torch.rand(2, 3, 16), 7)
    out = T.compact_keys(k.transpose(2, 3).contiguous().transpose(2, 3), idx)
    assert out.is_contiguous() and out.dtype == dtype
    for b in range(2):
        for h in range(3):
            assert torch.equal(out[b, h], k[b, h][:, idx[b, h]])


def test_pipeline_equals_masked_full_attention():
    """score -> select -> compact -> attend equals attention with the pruned key channels of the
    old tokens zeroed (what the original code computes, without saving any bytes)."""
    batch, hq, hkv, dim, lp, lr = 2, 8, 2, 32, 50, 6
    gen = torch.Generator().manual_seed(11)
    k = torch.randn(batch, hkv, lp + lr, dim, generator=gen)
    v = torch.randn(batch, hkv, lp + lr, dim, generator=gen)
    qw = torch.randn(batch, hq, 8, dim, generator=gen)
    q = torch.randn(batch, hq, 1, dim, generator=gen)
    idx = T.select_channels(T.channel_scores(qw, k[:, :, :lp]), T.kept_channels(dim, 0.4))
    out = T.pruned_decode_attention(q, T.compact_keys(k[:, :, :lp], idx), idx, k[:, :, lp:], v)
    keep = torch.zeros(batch, hkv, 1, dim).scatter_(3, idx[:, :, None], 1.0)
    k_zeroed = torch.cat([k[:, :, :lp] * keep, k[:, :, lp:]], dim=2)
    ref = F.scaled_dot_product_attention(q, k_zeroed, v, enable_gqa=True)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_kept_channels():
    assert T.kept_channels(128, 0.4) == 77
    assert T.kept_channels(128, 0.5) == 64
    assert T.kept_channels(128, 0.0) == 128
    assert T.kept_channels(100, 0.29) == 71  # 0.29 * 100 is 28.999999999999996 in floats
    with pytest.raises(ValueError, match="prune_ratio"):
        T.kept_channels(128, 1.0)
    with pytest.raises(ValueError, match="head_dim"):
        T.kept_channels(0, 0.4)


# --------------------------------------------------------------------------------------------
# Errors: validation names the argument; the C++ launcher re-checks what it indexes with
# --------------------------------------------------------------------------------------------


def _good():
    return list(make_inputs(2, 4, 2, 1, 8, 5, 6, 2, 8, torch.float32))


@pytest.mark.parametrize(
    "mutate, exc, match",
    [
        (lambda a: a.__setitem__(2, a[2] + 8), ValueError, r"idx must hold channel indices in \[0, 8\)"),
        (lambda a: a.__setitem__(2, a[2] - 9), ValueError, r"idx must hold"),
        (lambda a: a.__setitem__(2, a[2].float()), TypeError, r"idx must have dtype"),
        (lambda a: a.__setitem__(1, torch.randn(2, 2, 6, 9)), ValueError, r"T=9 channels"),
        (lambda a: a.__setitem__(0, torch.randn(2, 3, 1, 8)), ValueError, r"Hq % Hkv"),
        (lambda a: a.__setitem__(3, a[3].half()), TypeError, r"k_recent must have dtype"),
        (lambda a: a.__setitem__(3, torch.randn(2, 2, 2, 7)), ValueError, r"k_recent must be"),
        (lambda a: a.__setitem__(4, torch.randn(2, 2, 7, 8)), ValueError, r"v must be"),
        (lambda a: a.__setitem__(0, a[0].double()), TypeError, r"q must have dtype"),
        (lambda a: a.__setitem__(0, a[0][0]), ValueError, r"q must have 4 dimensions"),
    ],
    ids=["idx>=D", "idx<0", "idx-float", "T>D", "Hq%Hkv", "dtype", "k_recent-D", "v-length",
         "q-double", "q-3d"],
)
def test_attention_errors(mutate, exc, match):
    args = _good()
    mutate(args)
    with pytest.raises(exc, match=match):
        T.pruned_decode_attention(*args, backend="cpu")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lengths": torch.tensor([9, 8])}, r"lengths must satisfy"),
        ({"lengths": torch.tensor([8])}, r"lengths must have shape \(2,\)"),
        ({"lengths": torch.tensor([8.0, 8.0])}, r"lengths must have dtype"),
        ({"starts": torch.tensor([-1, 0])}, r"starts must be >= 0"),
        ({"starts": torch.tensor([9, 0])}, r"starts must be <="),
        ({"starts": torch.tensor([5, 0]), "lengths": torch.tensor([4, 8])}, r"lengths must"),
        ({"scale": float("nan")}, r"scale must be a finite float"),
        # CPU inputs: without a GPU 'cuda' is not available; with one it runs on CUDA tensors.
        ({"backend": "cuda"}, r"backend 'cuda' (is not available|runs on cuda tensors)"),
    ],
    ids=["lengths>L", "lengths-shape", "lengths-float", "starts<0", "starts>L", "start>end",
         "scale-nan", "cuda"],
)
def test_attention_errors_positions(kwargs, match):
    with pytest.raises((ValueError, TypeError, ponder.BackendUnavailableError), match=match):
        T.pruned_decode_attention(*_good(), **kwargs)


def test_cpp_launcher_rechecks_indices():
    """Bypass the Python checks: the C++ launcher refuses an out-of-range channel index and an
    inconsistent padding window rather than reading out of bounds."""
    q, kp, idx, kr, v = _good()
    out = torch.empty(2, 4, 1, 8)
    lse = torch.empty(2, 4, 1)
    bad = idx.clone()
    bad[1, 1, 2] = 8

    def launch(index, starts=None, lengths=None):
        buffers = [out, lse, q, kp, index, kr, v, starts, lengths]
        ponder._C.think_pruned_decode_attention(
            *buffer_args(buffers), 2, 4, 2, 1, 6, 2, 8, 5, 8,
            *kp.stride()[:3], *kr.stride()[:3], *v.stride()[:3], 0, 0.3, 1)

    launch(idx)  # the good call runs
    with pytest.raises(ValueError, match="idx holds 8"):
        launch(bad)
    with pytest.raises(ValueError, match="need 0 <= starts <= lengths"):
        launch(idx, lengths=torch.tensor([9, 8]))
    with pytest.raises(ValueError, match="need 0 <= starts <= lengths"):
        launch(idx, starts=torch.tensor([3, 0]), lengths=torch.tensor([2, 8]))


def test_other_ops_errors():
    k = torch.randn(1, 2, 5, 8)
    with pytest.raises(ValueError, match=r"Hq % Hkv"):
        T.channel_scores(torch.randn(1, 3, 4, 8), k)
    # Zero query heads is a multiple of Hkv, but leaves the group mean empty (it was NaN).
    with pytest.raises(ValueError, match=r"q_window has 0 heads, which must be a positive"):
        T.channel_scores(torch.randn(1, 0, 4, 8), k)
    with pytest.raises(ValueError, match=r"q_window must be"):
        T.channel_scores(torch.randn(1, 2, 4, 7), k)
    with pytest.raises(ValueError, match=r"at least one query"):
        T.channel_scores(torch.randn(1, 2, 0, 8), k)
    with pytest.raises(TypeError, match=r"q_window must have dtype"):
        T.channel_scores(torch.randn(1, 2, 4, 8).half(), k)
    with pytest.raises(ValueError, match=r"keep must be in \[0, D=8\]"):
        T.select_channels(torch.rand(1, 2, 8), 9)
    with pytest.raises(TypeError, match=r"keep must be an int"):
        T.select_channels(torch.rand(1, 2, 8), 3.0)
    with pytest.raises(ValueError, match=r"scores must be finite"):
        T.select_channels(torch.tensor([[[1.0, float("nan")]]]), 1)
    with pytest.raises(ValueError, match=r"idx must hold channel indices in \[0, 8\)"):
        T.compact_keys(k, torch.full((1, 2, 3), 8))
    with pytest.raises(ValueError, match=r"idx must have shape \(1, 2, 3\)"):
        T.compact_keys(k, torch.zeros(1, 1, 3, dtype=torch.long))


# --------------------------------------------------------------------------------------------
# torch.library
# --------------------------------------------------------------------------------------------


def test_opcheck(cpu_backend):
    q, kp, idx, kr, v = make_inputs(2, 4, 2, 3, 8, 5, 70, 4, 8, torch.float32)
    starts, lengths = torch.tensor([1, 0]), torch.tensor([74, 72])
    torch.library.opcheck(torch.ops.ponder.pruned_decode_attention.default,
                          (q, kp, idx, kr, v, lengths, starts, 0.3, cpu_backend))
    torch.library.opcheck(torch.ops.ponder.pruned_decode_attention.default,
                          (q, kp, idx, kr, v, None, None, 0.3, cpu_backend))
    torch.library.opcheck(torch.ops.ponder.channel_scores.default, (q, kr, cpu_backend))


def test_opcheck_device_independent_ops():
    k = torch.randn(2, 3, 7, 8)
    idx = T.select_channels(torch.rand(2, 3, 8), 5)
    torch.library.opcheck(torch.ops.ponder.select_channels.default, (torch.rand(2, 3, 8), 5))
    torch.library.opcheck(torch.ops.ponder.compact_keys.default, (k, idx))


def test_compiles():
    q, kp, idx, kr, v = make_inputs(1, 4, 2, 1, 8, 5, 20, 4, 8, torch.float32)

    def f(q, kp, idx, kr, v):
        return T.pruned_decode_attention(q, kp, idx, kr, v, backend="cpu") * 2.0

    eager = f(q, kp, idx, kr, v)  # also loads the backend table, once per process
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, kp, idx, kr, v), eager, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# GPU (pytest -m gpu): the CUDA and Triton kernels on a device, bfloat16 included
# --------------------------------------------------------------------------------------------

# Beyond CASES: a long cache over many CUDA chunks (16K keys, T = 77 compact rows that are not
# 16-byte aligned, Dv = 128 rows that are), a GQA group of 8 with S = 2 (two row tiles), a
# small head dim, and a prefill long enough to double the CUDA chunk length.
GPU_CASES = [
    *CASES,
    (1, 32, 8, 1, 128, 77, 16000, 384, 128),
    (2, 16, 2, 2, 64, 40, 3000, 17, 64),
    (1, 2, 1, 1, 8, 5, 513, 3, 4),
    (1, 4, 1, 1024, 64, 64, 16000, 1024, 64),
]
GPU_CASE_IDS = ["x".join(map(str, c)) for c in GPU_CASES]


@pytest.mark.gpu
@pytest.mark.parametrize("masked", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("case", GPU_CASES, ids=GPU_CASE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gpu_attention_matches_reference(gpu_backend, dtype, case, masked):
    batch, hq, hkv, s_len, dim, kept, lp, lr, dv = case
    if gpu_backend == "triton" and (hq // hkv) * s_len > 256:
        # The Triton kernel holds all G * S query rows of a KV head in one tile (BLOCK_R = the
        # next power of two): a 4096-row prefill is beyond it. (The CUDA kernel tiles rows by 8.)
        pytest.skip("Triton attention tiles every query row of a head at once")
    q, kp, idx, kr, v = make_inputs(batch, hq, hkv, s_len, dim, kept, lp, lr, dv, dtype)
    starts, lengths = padding(batch, lp + lr) if masked else (None, None)
    ref, ref_lse = T.pruned_decode_attention_reference(q, kp, idx, kr, v, lengths, None, starts)
    dev = [None if t is None else t.cuda() for t in (q, kp, idx, kr, v, lengths, starts)]
    out, lse = T.pruned_decode_attention(*dev[:6], return_lse=True, starts=dev[6],
                                         backend=gpu_backend)
    if dtype == torch.float32 and lp + lr > 2000:
        # float32 sums over 16K terms, in another order than the reference's.
        torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-5)
    else:
        assert_close_to_reference(out.cpu(), ref)
    assert_lse_close(lse.cpu(), ref_lse)


@pytest.mark.gpu
def test_gpu_attention_strided_cache_and_empty_window(gpu_backend):
    """Slices of a preallocated cache are read in place, and a row that sees nothing gets zeros
    and lse = -inf."""
    q, kp, idx, kr, v = make_inputs(2, 8, 2, 1, 64, 40, 700, 9, 64, torch.bfloat16)
    big_k = torch.zeros(2, 2, 2000, 40, dtype=torch.bfloat16)
    big_k[:, :, :700] = kp
    big_v = torch.zeros(2, 2, 2000, 64, dtype=torch.bfloat16)
    big_v[:, :, :709] = v
    starts = torch.tensor([0, 709])
    lengths = torch.tensor([709, 709])
    ref, ref_lse = T.pruned_decode_attention_reference(q, kp, idx, kr, v, lengths, None, starts)
    d = [t.cuda() for t in (q, big_k, idx, kr, big_v, lengths, starts)]
    out, lse = T.pruned_decode_attention(d[0], d[1][:, :, :700], d[2], d[3], d[4][:, :, :709],
                                         d[5], return_lse=True, starts=d[6], backend=gpu_backend)
    assert_close_to_reference(out.cpu(), ref)
    assert_lse_close(lse.cpu(), ref_lse)
    assert bool((out[1] == 0).all()) and bool((lse[1] == -math.inf).all())


@pytest.mark.gpu
def test_gpu_attention_nan_propagates(gpu_backend):
    """A NaN key makes the rows that see it NaN, as torch does; other rows stay finite."""
    q, kp, idx, kr, v = make_inputs(2, 4, 2, 1, 32, 20, 600, 5, 32, torch.float32)
    kp[0, 1, 300, 3] = math.nan
    ref = T.pruned_decode_attention_reference(q, kp, idx, kr, v)[0]
    out = T.pruned_decode_attention(*(t.cuda() for t in (q, kp, idx, kr, v)),
                                    backend=gpu_backend).cpu()
    assert torch.equal(out.isnan(), ref.isnan()) and bool(ref.isnan().any())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_gpu_nothing_pruned_equals_sdpa(gpu_backend, dtype):
    batch, hkv, group, dim, length = 1, 8, 4, 128, 4096
    q, _, _, k, v = make_inputs(batch, hkv * group, hkv, 1, dim, dim, 0, length, dim, dtype)
    q, k, v = q.cuda(), k.cuda(), v.cuda()
    idx = torch.arange(dim, device="cuda").expand(batch, hkv, dim)
    out = T.pruned_decode_attention(q, k[:, :, :4000], idx, k[:, :, 4000:], v,
                                    backend=gpu_backend)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=True)
    lowp = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert (out.float() - ref).abs().max() <= 2 * (lowp.float() - ref).abs().max() + 1e-6


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gpu_channel_scores(gpu_backend, dtype):
    qw = torch.randn(2, 8, 32, 128).to(dtype)
    k = torch.randn(2, 2, 3000, 128).to(dtype)
    out = T.channel_scores(qw.cuda(), k.cuda(), backend=gpu_backend)
    torch.testing.assert_close(out.cpu(), T.channel_scores_reference(qw, k), rtol=1e-4, atol=0)


@pytest.mark.gpu
def test_gpu_default_backend_runs():
    """With nothing forced, CUDA tensors run on the table's provisional default (docs/design.md)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    q, kp, idx, kr, v = make_inputs(1, 4, 2, 1, 16, 8, 50, 3, 16, torch.float16)
    out = T.pruned_decode_attention(*(t.cuda() for t in (q, kp, idx, kr, v)))
    assert_close_to_reference(out.cpu(), T.pruned_decode_attention_reference(q, kp, idx, kr, v)[0])


# --------------------------------------------------------------------------------------------
# The narrower CPU builds (baseline x86-64, AVX2, AVX-512 without BF16): never picked on a
# wider machine, so run here in subprocesses with PONDER_CPU_ISA capped, against the reference.
# --------------------------------------------------------------------------------------------

_ISA_SCRIPT = r"""
import sys, torch
import ponder._C as C
from ponder.ops import think as T
torch.manual_seed(0)
res = {"isa": C.active_isa()}
for dt in (torch.float32, torch.float16, torch.bfloat16):
    for case in ((2, 8, 2, 3, 33, 21, 600, 7), (1, 4, 4, 1, 128, 77, 40, 3), (1, 2, 1, 2, 7, 5, 9, 4)):
        b, hq, hkv, s, d, t, lp, lr = case
        q = torch.randn(b, hq, s, d).to(dt)
        kp, kr = torch.randn(b, hkv, lp, t).to(dt), torch.randn(b, hkv, lr, d).to(dt)
        v = torch.randn(b, hkv, lp + lr, d).to(dt)
        idx = torch.stack([torch.randperm(d)[:t] for _ in range(b * hkv)]).view(b, hkv, t)
        starts = torch.arange(b)
        out = T.pruned_decode_attention(q, kp, idx, kr, v, starts=starts, backend="cpu")
        ref = T.pruned_decode_attention_reference(q, kp, idx, kr, v, None, None, starts)[0]
        res[(str(dt), case)] = (out.float() - ref.float()).abs().max().item()
    qw, k = torch.randn(2, 8, 5, 24).to(dt), torch.randn(2, 2, 1100, 24).to(dt)
    sc, sr = T.channel_scores(qw, k, backend="cpu"), T.channel_scores_reference(qw, k)
    res[(str(dt), "scores")] = ((sc - sr).abs() / sr).max().item()
torch.save(res, sys.argv[1])
"""


@pytest.mark.parametrize("cap", ["default", "avx2", "avx512"])
def test_narrower_cpu_isa_matches_reference(tmp_path, cap):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PONDER_CPU_ISA=cap)
    path = tmp_path / f"{cap}.pt"
    subprocess.run([sys.executable, "-c", _ISA_SCRIPT, str(path)], check=True, env=env)
    res = torch.load(path)
    if res.pop("isa") != cap:
        pytest.skip(f"this CPU cannot run the {cap} build")
    tol = {"torch.float32": 2e-6, "torch.float16": 2e-3, "torch.bfloat16": 1.6e-2}
    for (dtype, case), err in res.items():
        assert err <= (2e-5 if case == "scores" else tol[dtype]), (dtype, case, err)


def test_bf16_scores_keep_full_precision():
    """A bf16 cache's scores are exact products of the stored bf16 values summed in fp32, on
    every build (the AVX512-BF16 one dots the unscaled bf16 query with vdpbf16ps and scales the
    sum). Checked through lse (fp32, so not hidden by the bf16 output's rounding) against the
    float64 reference of the same bf16 tensors: an error of fp32 accumulation is ~1e-6 here,
    while a query rounded to bf16 after the scaling would be off by ~1e-2."""
    g = torch.Generator().manual_seed(5)
    b, hq, hkv, d, t, lp, lr = 1, 8, 2, 128, 77, 700, 33  # T = 77: full vectors and a tail
    q = (3 * torch.randn(b, hq, 1, d, generator=g)).bfloat16()
    kp = (3 * torch.randn(b, hkv, lp, t, generator=g)).bfloat16()
    kr = (3 * torch.randn(b, hkv, lr, d, generator=g)).bfloat16()
    v = torch.randn(b, hkv, lp + lr, d, generator=g).bfloat16()
    idx = torch.stack([torch.randperm(d, generator=g)[:t] for _ in range(b * hkv)])
    idx = idx.view(b, hkv, t)
    _, lse = T.pruned_decode_attention(q, kp, idx, kr, v, return_lse=True, backend="cpu")
    _, ref = T.pruned_decode_attention_reference(q.double(), kp.double(), idx, kr.double(),
                                                 v.double(), None, None, None)
    assert (lse.double() - ref).abs().max().item() < 5e-5


def test_prechecked_equals_the_checked_op(cpu_backend):
    """The fast path ponder.kv's cache takes each decode step: same output as the public op."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 4, 1, 16, generator=g)
    k = torch.randn(2, 2, 40, 16, generator=g)
    v = torch.randn(2, 2, 40, 16, generator=g)
    idx = T.select_channels(T.channel_scores(q, k), 10)
    k_pruned, k_recent = T.compact_keys(k[:, :, :32], idx), k[:, :, 32:]
    starts = torch.tensor([0, 5])
    want = T.pruned_decode_attention(q, k_pruned, idx, k_recent, v, scale=0.3, starts=starts,
                                         backend=cpu_backend)
    name = T.pruned_decode_attention_backend(q, cpu_backend)
    assert name == cpu_backend
    got = T.pruned_decode_attention_prechecked(q, k_pruned, idx, k_recent, v, scale=0.3,
                                                   starts=starts, backend=name)
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_cuda_split_depends_on_shapes_and_bounds_the_workspace():
    """The CUDA kernel's key chunks: 256 keys for decode; doubled for a long prefill so that the
    partials stay within the budget; the workspace holds every partial (m, l and Dv outputs)."""
    assert T._cuda_split(8, 4, 16384, 128) == (256, 8 * 64 * 4 * 130)
    assert T._cuda_split(1, 1, 1, 8) == (256, 1 * 1 * 1 * 10)
    chunk, floats = T._cuda_split(1, 4096, 17024, 64)
    assert chunk == 512 and floats == 4096 * 66 * -(-17024 // 512)
    assert floats <= T._CUDA_PARTIAL_BUDGET

def test_decode_plan_equals_the_checked_op(cpu_backend):
    """PrunedDecodePlan (the kernel bound to preallocated stores, ponder.kv's per-step path)
    attends over the used prefix of each store exactly as the public op does on views of them,
    at every fill level of a decode loop, and refuses a query of another dtype."""
    g = torch.Generator().manual_seed(4)
    batch, hkv, dim, cap = 2, 2, 16, 48
    k_pruned_buf = torch.randn(batch, hkv, cap, 10, generator=g)
    idx = torch.stack([torch.randperm(dim, generator=g)[:10].sort().values
                       for _ in range(batch * hkv)]).reshape(batch, hkv, 10)
    k_recent_buf = torch.randn(batch, hkv, cap, dim, generator=g)
    v_buf = torch.randn(batch, hkv, 2 * cap, dim, generator=g)
    starts = torch.tensor([0, 3])
    q = torch.randn(batch, 4, 1, dim, generator=g)
    name = T.pruned_decode_attention_backend(q, cpu_backend)
    plan = T.PrunedDecodePlan(q, k_pruned_buf, idx, k_recent_buf, v_buf, starts, name)
    assert plan.holds(k_pruned_buf, idx, k_recent_buf, v_buf, starts)
    assert not plan.holds(k_pruned_buf, idx, k_recent_buf.clone(), v_buf, starts)
    for n_pruned, n_recent in [(32, 1), (32, 7), (40, 0), (0, 5), (3, 48)]:
        want = T.pruned_decode_attention(
            q, k_pruned_buf[:, :, :n_pruned], idx, k_recent_buf[:, :, :n_recent],
            v_buf[:, :, :n_pruned + n_recent], scale=0.3, starts=starts, backend=cpu_backend)
        got = plan(q, n_pruned, n_recent, 0.3)
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    with pytest.raises(TypeError, match="q is torch.float64"):
        plan(q.double(), 32, 1, 0.3)
