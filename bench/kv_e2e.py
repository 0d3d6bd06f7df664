"""End-to-end ThinK benchmark: decode tokens/s and KV-cache bytes of a random-init Llama.

    python bench/kv_e2e.py                       # 8K and 32K context, fp32, the table below
    python bench/kv_e2e.py --context 8192 --steps 16 --dtype bfloat16
    python bench/kv_e2e.py --generate --context 4096 --steps 16   # real prefill + generate
    python bench/kv_e2e.py --generate --model demo --context 1024 2048 --steps 32 --ratios 0.4 \
        --rounds 5                               # ponder demo's small Llama, rounds in turn

The model: a LlamaForCausalLM from a config (no download), hidden 1024, 8 layers, 8 query heads,
2 KV heads (GQA 4:1), head_dim 128, MLP 2816, vocabulary 32000: 155M parameters (620 MB fp32).

The cache is filled synthetically (random keys and values at the context length, and for ThinK
random observation-window queries for the channel scores) instead of by a real prefill: a 32K
prefill costs tens of TFLOP, minutes of two shared cores, and decode speed does not depend on
where the cache came from. Then ``--steps`` greedy decode steps run through the whole model
(``model(token, cache=...)``), the caches taking turns step by step so that the load of a
shared machine falls on all alike; the median step after one warm-up round. Rows:

- ``dense``: transformers' DynamicCache + SDPA (what ``generate`` uses by default; its
  ``torch.cat`` per step copies the cache, as it does in real use);
- ``think l=0``: ponder's ThinK cache with nothing pruned (same storage scheme: shows what the
  preallocated stores alone change);
- ``think l=0.4`` / ``l=0.5``: channel pruning at the ratio (recent store: 32 tokens).

Cache bytes are :func:`ponder.kv.cache_nbytes` after the decode steps (storages actually held).

``--generate`` runs the real thing instead: ``model.generate`` on a random prompt of the context
length (prefill, ThinK's scoring and pruning, ``--steps`` greedy tokens), timing each forward with
a logits processor; decode = the median gap between the forwards after the first. With
``--rounds N`` every cache runs one ``generate`` per round, in turn, and each row is the median
over the rounds.

``--model demo`` swaps the 155M model for ``ponder demo``'s ThinK speed model (4 layers, hidden
512, 8 query / 2 KV heads of dim 64, 31-token vocabulary: 8.9M parameters). On a model that
small the weights are read in about a millisecond, so ThinK's per-step costs (cache
bookkeeping, the kernel launch) weigh most there: the case where ThinK must not be slower.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

CONFIG = {
    "vocab_size": 32000, "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8,
    "num_attention_heads": 8, "num_key_value_heads": 2, "max_position_embeddings": 65536,
    "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
}
# ``--model demo``: the random-init Llama of ``ponder demo``'s ThinK speed table (4 layers,
# hidden 512, 8 query / 2 KV heads of dim 64, the toy tokenizer's 31 tokens: 8.9M parameters).
# A small model is where ThinK's per-step overhead shows: its weights take ~1 ms a step to read,
# so attention and the cache bookkeeping are a large part of a step.
DEMO_CONFIG = {
    "vocab_size": 31, "hidden_size": 512, "intermediate_size": 1024, "num_hidden_layers": 4,
    "num_attention_heads": 8, "num_key_value_heads": 2, "max_position_embeddings": 65536,
    "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
}
MODELS = {"llama-155m": CONFIG, "demo": DEMO_CONFIG}
WINDOW = 32
RECENT = 32


def build_model(dtype: torch.dtype, name: str = "llama-155m"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**MODELS[name])).to(dtype).eval()
    model.generation_config.update(eos_token_id=None)  # decode exactly the steps asked
    model.set_attn_implementation("sdpa")
    return model


def fill_dense(model, context: int, dtype: torch.dtype):
    from transformers import DynamicCache

    cfg = model.config
    d = cfg.hidden_size // cfg.num_attention_heads
    g = torch.Generator().manual_seed(1)
    cache = DynamicCache()
    for layer in range(cfg.num_hidden_layers):
        k = torch.randn(1, cfg.num_key_value_heads, context, d, generator=g).to(dtype)
        v = torch.randn(1, cfg.num_key_value_heads, context, d, generator=g).to(dtype)
        cache.update(k, v, layer)
    return cache


def fill_think(model, context: int, dtype: torch.dtype, ratio: float, steps: int, backend):
    from ponder.kv import ThinKCache, ThinKLayer

    cfg = model.config
    d = cfg.hidden_size // cfg.num_attention_heads
    g = torch.Generator().manual_seed(1)
    cache = ThinKCache(prune_ratio=ratio, window=WINDOW, recent=RECENT, backend=backend,
                       max_cache_len=context + steps + 1)
    for _ in range(cfg.num_hidden_layers):
        k = torch.randn(1, cfg.num_key_value_heads, context, d, generator=g).to(dtype)
        v = torch.randn(1, cfg.num_key_value_heads, context, d, generator=g).to(dtype)
        q = torch.randn(1, cfg.num_attention_heads, WINDOW, d, generator=g).to(dtype)
        layer = ThinKLayer(cache.settings, cache.max_cache_len)
        layer.update(k, v)
        layer.compress(q, None, d ** -0.5)
        cache.layers.append(layer)
    return cache


@torch.inference_mode()
def decode_step(model, cache, position: int, token: torch.Tensor) -> tuple[float, torch.Tensor]:
    """One decode step through the whole model (batch 1): (seconds, next greedy token)."""
    start = time.perf_counter()
    logits = model(token, cache=cache, position_ids=torch.tensor([[position]]),
                   use_cache=True).logits
    return time.perf_counter() - start, logits[:, -1:].argmax(-1)


@torch.inference_mode()
def generate_row(model, context: int, steps: int) -> tuple[float, float, int]:
    """(prefill s, median decode s/token, cache bytes) of one real ``generate``."""
    from ponder.kv import cache_nbytes
    from ponder.kv.measure import DecodeClock
    from transformers import LogitsProcessorList

    ids = torch.randint(3, model.config.vocab_size, (1, context),
                        generator=torch.Generator().manual_seed(2))
    clock = DecodeClock()
    start = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                         max_new_tokens=steps + 1, min_new_tokens=steps + 1, do_sample=False,
                         return_dict_in_generate=True,
                         logits_processor=LogitsProcessorList([clock]))
    gaps = [b - a for a, b in zip(clock.times, clock.times[1:])]
    return clock.times[0] - start, statistics.median(gaps), cache_nbytes(out.cache)


def run_generate(contexts, steps: int, dtype: torch.dtype, ratios, backend, model_name: str,
                 rounds: int) -> list[dict]:
    """Per context, ``rounds`` rounds of one ``generate`` per cache (dense, then each ratio,
    in turn: the machine's load falls on all alike); each row the median over the rounds."""
    from ponder.kv import apply_think, remove_think

    model = build_model(dtype, model_name)
    rows = []
    for context in contexts:
        impls = [None, *ratios]
        runs: list[list[tuple[float, float, int]]] = [[] for _ in impls]
        for _ in range(rounds):
            for i, ratio in enumerate(impls):
                if ratio is None:
                    remove_think(model)
                else:
                    apply_think(model, prune_ratio=ratio, window=WINDOW, recent=RECENT,
                                backend=backend)
                runs[i].append(generate_row(model, context, steps))
                gc.collect()
        remove_think(model)
        dense_s = statistics.median(r[1] for r in runs[0])
        dense_bytes = runs[0][0][2]
        for ratio, got in zip(impls, runs):
            impl = "dense (DynamicCache + SDPA)" if ratio is None else f"ThinK lambda={ratio}"
            prefill = statistics.median(r[0] for r in got)
            rows.append({"context": context, "impl": impl,
                         "s_per_token": statistics.median(r[1] for r in got),
                         "bytes": got[0][2], "prefill_s": prefill,
                         "rounds_s_per_token": [r[1] for r in got]})
            print(_fmt(rows[-1], dense_bytes, dense_s) + f" {prefill:8.2f} |", flush=True)
    return rows


def run(contexts, steps: int, dtype: torch.dtype, ratios, backend,
        model_name: str = "llama-155m") -> list[dict]:
    """Per context: every cache built first, then ``steps + 1`` rounds of one decode step per
    cache, in turn (so the load of the shared machine falls on all of them alike); the median
    step of each cache, the first round left out (warm-up)."""
    import warnings

    from ponder.kv import ThinKDenseWarning, apply_think, cache_nbytes

    model = build_model(dtype, model_name)
    # With a DynamicCache ponder's attention is transformers' SDPA: one patched model serves
    # every row, each ThinK cache carrying its own settings. The dense row is that on purpose:
    # the warning a patched model gives for a dense cache is not news here.
    warnings.filterwarnings("ignore", category=ThinKDenseWarning)
    apply_think(model, window=WINDOW, recent=RECENT, backend=backend)
    rows = []
    for context in contexts:
        names = ["dense (DynamicCache + SDPA)"] + [f"ThinK lambda={r}" for r in ratios]
        caches = [fill_dense(model, context, dtype)] + [
            fill_think(model, context, dtype, r, steps, backend) for r in ratios
        ]
        tokens = [torch.tensor([[3]]) for _ in caches]
        times: list[list[float]] = [[] for _ in caches]
        for step in range(steps + 1):
            for i, cache in enumerate(caches):
                dt, tokens[i] = decode_step(model, cache, context + step, tokens[i])
                if step:
                    times[i].append(dt)
        dense_bytes, dense_s = cache_nbytes(caches[0]), statistics.median(times[0])
        for name, cache, t in zip(names, caches, times):
            rows.append({"context": context, "impl": name, "s_per_token": statistics.median(t),
                         "bytes": cache_nbytes(cache)})
            print(_fmt(rows[-1], dense_bytes, dense_s), flush=True)
        del caches, cache
        gc.collect()
    return rows


def _fmt(row: dict, dense_bytes: int, dense_s: float) -> str:
    return (f"| {row['context']:>6} | {row['impl']:<28} | {1 / row['s_per_token']:8.2f} | "
            f"{1e3 * row['s_per_token']:8.1f} | {row['bytes'] / 2**20:9.1f} | "
            f"{row['bytes'] / dense_bytes:5.3f} | {dense_s / row['s_per_token']:5.2f}x |")


HEADER = ("| context | cache | tokens/s | ms/token | cache MiB | bytes vs dense | speed vs dense "
          "|\n"
          "|---:|---|---:|---:|---:|---:|---:|")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--context", type=int, nargs="+", default=[8192, 32768])
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.4, 0.5])
    p.add_argument("--backend", choices=["cpu", "torch", "triton"], default=None)
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--generate", action="store_true",
                   help="real prefill + model.generate instead of a synthetic cache")
    p.add_argument("--model", choices=sorted(MODELS), default="llama-155m",
                   help="llama-155m (default) or demo: ponder demo's 4-layer Llama")
    p.add_argument("--rounds", type=int, default=1,
                   help="--generate: rounds of one generate per cache in turn (median)")
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or 'cpu'}"
          f", torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}, "
          f"batch 1, {args.steps} decode steps, backend {args.backend or 'default'}, "
          f"model {args.model}" + (f", {args.rounds} rounds" if args.generate else ""))
    if args.generate:
        print(HEADER.replace("speed vs dense |", "speed vs dense | prefill s |", 1)
              .replace("---:|\"", "---:|---:|\"") + "---:|")
        rows = run_generate(args.context, args.steps, dtype, args.ratios, args.backend,
                            args.model, args.rounds)
    else:
        print(HEADER)
        rows = run(args.context, args.steps, dtype, args.ratios, args.backend, args.model)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
