"""Benchmarks of ThinK decode attention (ponder.ops.think.pruned_decode_attention) on the CPU.

One decode step of one layer: B=1, Hq=32, Hkv=8 (GQA 4), D=128, S=1, L in {4K, 32K} cached tokens
of which the last 32 are the full-width "recent" store, lambda in {0, 0.4, 0.5} of the key
channels pruned (T = D - floor(lambda D) = 128, 77, 64), float32 and bfloat16.

Implementations (``extra_info["impl"]``):
  ponder-cpu   ponder's C++ kernel on the compact cache (reads T/D of the old keys);
  ponder-torch ponder's plain-torch reference backend (L = 4K only: it materialises the logits);
  sdpa-full    torch's scaled_dot_product_attention(enable_gqa=True) on the full dense cache:
               what transformers does without ThinK.

Bytes per call (``extra_info["bytes"]``) are what each implementation must read at least: the
compact keys + recent keys + values (+ q and the output) for ponder, full K + V for SDPA.

    pytest bench/test_bench_think.py          pytest-benchmark's report (or python bench/run.py)
    python bench/test_bench_think.py          the markdown table of bench/think.md, with the
                                              copy bandwidth measured in the same process
"""

from __future__ import annotations

import os
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from ponder.ops import think

CPU = torch.device("cpu")
BATCH, HQ, HKV, DIM, RECENT = 1, 32, 8, 128, 32
LENGTHS = {"4K": 4096, "32K": 32768}
LAMBDAS = [0.0, 0.4, 0.5]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
COPY_BYTES = 512 * 2**20


def make_cache(length: int, dtype: torch.dtype, prune_ratio: float, seed: int = 0):
    """q [1, 32, 1, 128] and a ThinK cache of ``length`` tokens: compact keys of the first
    ``length - 32`` tokens (channels chosen by channel_scores on a random window), full-width
    recent keys, values; plus the dense K for SDPA."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(BATCH, HQ, 1, DIM, generator=gen).to(dtype)
    k = torch.randn(BATCH, HKV, length, DIM, generator=gen).to(dtype)
    v = torch.randn(BATCH, HKV, length, DIM, generator=gen).to(dtype)
    window = torch.randn(BATCH, HQ, 32, DIM, generator=gen).to(dtype)
    lp = length - RECENT
    idx = think.select_channels(think.channel_scores(window, k[:, :, :lp]),
                                think.kept_channels(DIM, prune_ratio))
    k_pruned = think.compact_keys(k[:, :, :lp], idx)
    k_recent = k[:, :, lp:].contiguous()
    return q, k, v, k_pruned, idx, k_recent


def ponder_bytes(q, k_pruned, k_recent, v) -> int:
    tensors = (q, k_pruned, k_recent, v, q)  # q read, out (like q) written
    return sum(t.numel() * t.element_size() for t in tensors)


def sdpa_bytes(q, k, v) -> int:
    return sum(t.numel() * t.element_size() for t in (q, k, v, q))


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("size", list(LENGTHS))
@pytest.mark.parametrize("impl", ["ponder-cpu", "ponder-torch", "sdpa-full"])
@pytest.mark.parametrize("prune_ratio", LAMBDAS)
def test_pruned_decode_attention(measure, prune_ratio, impl, size, dtype):
    if impl == "sdpa-full" and prune_ratio != 0.0:
        pytest.skip("SDPA reads the dense cache: one row per (L, dtype)")
    if impl == "ponder-torch" and size != "4K":
        pytest.skip("the reference materialises the logits: L = 4K only")
    q, k, v, kp, idx, kr = make_cache(LENGTHS[size], DTYPES[dtype], prune_ratio)
    if impl == "sdpa-full":
        def fn():
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        nbytes = sdpa_bytes(q, k, v)
    else:
        backend = impl.removeprefix("ponder-")

        def fn():
            return think.pruned_decode_attention(q, kp, idx, kr, v, backend=backend)
        nbytes = ponder_bytes(q, kp, kr, v)
    measure(fn, device=CPU, group=f"think decode L={size} {dtype}", kind="think_decode",
            op="pruned_decode_attention", size=size, impl=impl, dtype=dtype,
            prune_ratio=prune_ratio, kept=kp.shape[-1],
            shape={"B": BATCH, "Hq": HQ, "Hkv": HKV, "D": DIM, "L": LENGTHS[size],
                   "recent": RECENT}, bytes=nbytes)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("size", list(LENGTHS))
@pytest.mark.parametrize("impl", ["ponder-triton", "sdpa-full"])
@pytest.mark.parametrize("prune_ratio", LAMBDAS)
def test_pruned_decode_attention_gpu(measure, prune_ratio, impl, size, dtype):
    """The same on a GPU: ponder's Triton split-K kernel vs SDPA (FlashAttention/efficient) on
    the dense cache; target >= 80% of HBM bandwidth on the bytes read (docs/benchmarks.md)."""
    if impl == "sdpa-full" and prune_ratio != 0.0:
        pytest.skip("SDPA reads the dense cache: one row per (L, dtype)")
    dev = torch.device("cuda")
    q, k, v, kp, idx, kr = (t.to(dev) for t in make_cache(LENGTHS[size], DTYPES[dtype],
                                                          prune_ratio))
    if impl == "sdpa-full":
        def fn():
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        nbytes = sdpa_bytes(q, k, v)
    else:
        def fn():
            return think.pruned_decode_attention(q, kp, idx, kr, v, backend="triton")
        nbytes = ponder_bytes(q, kp, kr, v)
    measure(fn, device=dev, group=f"think decode L={size} {dtype} gpu", kind="think_decode",
            op="pruned_decode_attention", size=size, impl=impl, dtype=dtype,
            prune_ratio=prune_ratio, kept=kp.shape[-1], bytes=nbytes)


# --------------------------------------------------------------------------------------------
# python bench/test_bench_think.py: the table, measured in one process
# --------------------------------------------------------------------------------------------


def _interleaved_min_ms(fns: dict, copy, reps: int) -> dict:
    """{name: min wall time in ms}, "copy" included: every rep calls each function once, in
    turn, so that load from other processes on a shared machine hits all of them alike (after
    two warm-up rounds); the 1 GiB copy probe runs before each call, so every call starts with
    its data out of the caches (as in a model, where the other layers' caches pass through
    the L3 between two decode steps of one layer)."""
    best = {name: float("inf") for name in [*fns, "copy"]}
    for rep in range(reps + 2):
        for name, fn in fns.items():
            for key, f in (("copy", copy), (name, fn)):
                t0 = time.perf_counter()
                f()
                ms = (time.perf_counter() - t0) * 1e3
                if rep >= 2:
                    best[key] = min(best[key], ms)
    return best


def _group(length: int, dtype: torch.dtype, copy) -> tuple[dict, dict, float]:
    """Times of SDPA, ponder at every lambda and the copy probe, interleaved; bytes per lambda."""
    caches = {lam: make_cache(length, dtype, lam) for lam in LAMBDAS}
    q, k, v = caches[0.0][:3]
    fns = {"sdpa": lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)}
    for lam, (q_, _, v_, kp, idx, kr) in caches.items():
        fns[lam] = (lambda q_=q_, kp=kp, idx=idx, kr=kr, v_=v_:
                    think.pruned_decode_attention(q_, kp, idx, kr, v_, backend="cpu"))
    best = _interleaved_min_ms(fns, copy, 20 if length > 8192 else 40)
    info = {lam: (ponder_bytes(c[0], c[3], c[5], c[2]), c[3].shape[-1])
            for lam, c in caches.items()}
    return best, info, 2 * COPY_BYTES / best["copy"] / 1e6


def main() -> None:
    threads = torch.get_num_threads()
    src = torch.ones(COPY_BYTES // 4)
    dst = torch.zeros_like(src)
    print(f"torch threads {threads}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print()
    print("| L | dtype | lambda | T | SDPA full (ms) | ponder cpu (ms) | speed-up | "
          "MB read | GB/s | copy GB/s | % of copy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size, length in LENGTHS.items():
        for dname, dtype in DTYPES.items():
            best, info, copy_gbs = _group(length, dtype, lambda: dst.copy_(src))
            for lam in LAMBDAS:
                nbytes, kept = info[lam]
                ms = best[lam]
                gbs = nbytes / ms / 1e6
                print(f"| {size} | {dname} | {lam} | {kept} | {best['sdpa']:.2f} | {ms:.2f} | "
                      f"{best['sdpa'] / ms:.2f}x | {nbytes / 1e6:.0f} | {gbs:.1f} | "
                      f"{copy_gbs:.1f} | {100 * gbs / copy_gbs:.0f}% |")
                sys.stdout.flush()
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
