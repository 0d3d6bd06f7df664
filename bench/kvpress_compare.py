"""ponder's ThinK against kvpress's ThinKPress: same model, prompt and settings.

    python bench/kvpress_compare.py                          # kvpress importable here
    python bench/kvpress_compare.py --kvpress-python /work/venv-kvpress/bin/python

kvpress (NVIDIA's KV-cache compression library, ``pip install kvpress``) pins its own
transformers range, which may not be the one ponder runs on. With ``--kvpress-python`` (or when
kvpress does not import here) the kvpress side runs in that interpreter, a separate process: the
model is handed over as a saved checkpoint (``save_pretrained``, so both sides hold the same
weights whatever their transformers versions initialise), the prompt as token ids, and the
results come back as a ``torch.save`` file. Without kvpress anywhere the script says so and
exits with status 2. It is not part of any test run.

What it builds: a random-init ``LlamaForCausalLM`` (hidden 256, 2 layers, 4 query / 2 KV heads
of dim 64, vocabulary 512; seeded), a random prompt of ``--context`` tokens, one decode step
after it. Each side prefills the prompt, prunes a fraction ``--ratio`` of each KV head's key
channels, scored by the last ``--window`` queries, then decodes one token (``--token``):

- **kvpress** ``ThinKPress(key_channel_compression_ratio=ratio, window_size=window)`` on a
  ``DynamicCache``: it zeroes the pruned channels of every prompt key (shapes unchanged);
- **ponder** ``apply_think(model, prune_ratio=ratio, window=window, recent=R)`` on a
  ``ThinKCache`` sized for the prompt + 1 (so the bytes it holds are the bytes it uses). With
  ``--recent 0`` (the default) every prompt key is pruned, as kvpress does; ponder's default
  keeps the last 32 prompt keys at full width (``--recent 32`` shows that).

Reported per run: the channels each side keeps per (layer, KV head) and how many differ; the
first decode step's logits (max abs difference between the sides, and of each from the dense
cache); the KV-cache bytes each holds after that step (``ponder.kv.cache_nbytes``: tensor
storages actually held), against the dense ``DynamicCache``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

CONFIG = {
    "vocab_size": 512, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 8192,
    "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
}
SEED = 0


def _cache_kw(model) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _nbytes(cache) -> int:
    """Storage bytes of every tensor a DynamicCache's layers hold (what cache_nbytes counts)."""
    seen, total = set(), 0
    for layer in cache.layers:
        for t in vars(layer).values():
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                total += t.untyped_storage().nbytes()
    return total


@torch.inference_mode()
def _prefill_and_step(model, ids, token, cache, press=None):
    """Prefill ``ids`` into ``cache`` (under ``press`` if given), then one decode step of
    ``token``: its logits ``[vocab]`` float32."""
    import contextlib

    kw = _cache_kw(model)
    length = ids.shape[1]
    with press(model) if press is not None else contextlib.nullcontext():
        model(ids, use_cache=True, **{kw: cache})
    out = model(torch.tensor([[token]]), use_cache=True,
                position_ids=torch.tensor([[length]]), **{kw: cache})
    return out.logits[0, -1].float()


def kvpress_side(model_dir: str, ids: torch.Tensor, token: int, ratio: float,
                 window: int) -> dict:
    """The kvpress run (in whichever interpreter has kvpress): logits, kept channels, bytes."""
    import importlib.metadata

    import transformers
    from kvpress import ThinKPress
    from transformers import AutoModelForCausalLM, DynamicCache

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.set_attn_implementation("sdpa")
    press = ThinKPress(key_channel_compression_ratio=ratio, window_size=window)
    cache = DynamicCache()
    logits = _prefill_and_step(model, ids, token, cache, press)
    length = ids.shape[1]
    kept = []
    for layer in cache.layers:
        prompt_keys = layer.keys[:, :, :length]  # the decoded token's key is not pruned
        kept.append((prompt_keys != 0).any(dim=2))  # [B, Hkv, D] bool: channels not zeroed
    dense = DynamicCache()
    dense_logits = _prefill_and_step(model, ids, token, dense)
    return {"logits": logits, "dense_logits": dense_logits, "kept": torch.stack(kept),
            "bytes": _nbytes(cache), "dense_bytes": _nbytes(dense),
            "versions": f"kvpress {importlib.metadata.version('kvpress')}, "
                        f"transformers {transformers.__version__}"}


def ponder_side(model_dir: str, ids: torch.Tensor, token: int, ratio: float, window: int,
                recent: int) -> dict:
    import transformers
    from ponder.kv import ThinKCache, apply_think, cache_nbytes
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    apply_think(model, prune_ratio=ratio, window=window, recent=recent)
    cache = ThinKCache(prune_ratio=ratio, window=window, recent=recent,
                       max_cache_len=ids.shape[1] + 1, config=model.config)
    logits = _prefill_and_step(model, ids, token, cache)
    dim = model.config.hidden_size // model.config.num_attention_heads
    kept = []
    for layer in cache.layers:
        mask = torch.zeros(*layer.idx.shape[:2], dim, dtype=torch.bool)
        kept.append(mask.scatter_(-1, layer.idx, True))
    return {"logits": logits, "kept": torch.stack(kept), "bytes": cache_nbytes(cache),
            "used_bytes": cache_nbytes(cache, used=True),
            "versions": f"transformers {transformers.__version__}"}


def _kvpress_here() -> bool:
    return importlib.util.find_spec("kvpress") is not None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--context", type=int, default=512, help="prompt tokens")
    p.add_argument("--ratio", type=float, default=0.4, help="fraction of key channels pruned")
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--recent", type=int, default=0, help="ponder's full-width prompt tail")
    p.add_argument("--token", type=int, default=7, help="the token decoded after the prompt")
    p.add_argument("--kvpress-python", default=None,
                   help="an interpreter with kvpress installed, for its side (separate process)")
    p.add_argument("--json", default=None, help="also write the summary here")
    # Internal: run the kvpress side only (in the kvpress interpreter).
    p.add_argument("--kvpress-side", nargs=2, metavar=("WORKDIR", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # save/load progress bars

    if args.kvpress_side:
        work, out = args.kvpress_side
        ids = torch.load(Path(work) / "ids.pt")
        torch.save(kvpress_side(str(Path(work) / "model"), ids, args.token, args.ratio,
                                args.window), out)
        return 0

    here = _kvpress_here()
    if not here and args.kvpress_python is None:
        print("kvpress is not installed in this interpreter. Install it in a separate virtual "
              "environment (python3 -m venv /work/venv-kvpress; pip install torch==2.13.0 "
              "kvpress) and pass --kvpress-python /work/venv-kvpress/bin/python",
              file=sys.stderr)
        return 2
    from transformers import LlamaConfig, LlamaForCausalLM

    with tempfile.TemporaryDirectory() as work:
        torch.manual_seed(SEED)
        LlamaForCausalLM(LlamaConfig(**CONFIG)).save_pretrained(Path(work) / "model")
        ids = torch.randint(3, CONFIG["vocab_size"], (1, args.context),
                            generator=torch.Generator().manual_seed(SEED + 1))
        torch.save(ids, Path(work) / "ids.pt")
        if args.kvpress_python is not None:
            out = Path(work) / "kvpress.pt"
            cmd = [args.kvpress_python, str(Path(__file__).resolve()), "--kvpress-side", work,
                   str(out), "--ratio", str(args.ratio), "--window", str(args.window),
                   "--token", str(args.token)]
            run = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if run.returncode != 0:
                print(f"the kvpress side failed ({' '.join(cmd[:2])}):\n{run.stderr[-3000:]}",
                      file=sys.stderr)
                return 1
            kv = torch.load(out)
        else:
            kv = kvpress_side(str(Path(work) / "model"), ids, args.token, args.ratio,
                              args.window)
        pd = ponder_side(str(Path(work) / "model"), ids, args.token, args.ratio, args.window,
                         args.recent)

    kept_kv, kept_pd = kv["kept"], pd["kept"]  # [layers, B, Hkv, D] bool
    differ = int((kept_kv != kept_pd).any(dim=-1).sum())
    heads = kept_kv.shape[0] * kept_kv.shape[1] * kept_kv.shape[2]
    summary = {
        "context": args.context, "ratio": args.ratio, "window": args.window,
        "recent": args.recent,
        "kvpress": kv["versions"], "ponder": pd["versions"],
        "kept_channels_kvpress": int(kept_kv[0, 0, 0].sum()),
        "kept_channels_ponder": int(kept_pd[0, 0, 0].sum()),
        "heads_with_different_channels": differ, "heads": heads,
        "max_abs_logit_diff_ponder_vs_kvpress": float((pd["logits"] - kv["logits"]).abs().max()),
        "max_abs_logit_diff_kvpress_vs_dense":
            float((kv["logits"] - kv["dense_logits"]).abs().max()),
        "max_abs_logit_diff_ponder_vs_dense":
            float((pd["logits"] - kv["dense_logits"]).abs().max()),
        "same_next_token": bool(pd["logits"].argmax() == kv["logits"].argmax()),
        "dense_bytes": kv["dense_bytes"], "kvpress_bytes": kv["bytes"],
        "ponder_bytes": pd["bytes"], "ponder_used_bytes": pd["used_bytes"],
    }
    d = summary["dense_bytes"]
    print(f"# {summary['kvpress']} | ponder on {summary['ponder']} | context {args.context}, "
          f"lambda {args.ratio}, window {args.window}, ponder recent {args.recent}")
    print("| | kvpress ThinKPress | ponder ThinK |\n|---|---:|---:|")
    print(f"| key channels kept per KV head (of {kept_kv.shape[-1]}) | "
          f"{summary['kept_channels_kvpress']} | {summary['kept_channels_ponder']} |")
    print(f"| (layer, KV head) pairs keeping different channels | {differ} of {heads} | |")
    print(f"| first decode step: max abs logit difference vs dense | "
          f"{summary['max_abs_logit_diff_kvpress_vs_dense']:.3g} | "
          f"{summary['max_abs_logit_diff_ponder_vs_dense']:.3g} |")
    print(f"| first decode step: max abs logit difference ponder vs kvpress | | "
          f"{summary['max_abs_logit_diff_ponder_vs_kvpress']:.3g} |")
    print(f"| KV-cache bytes held after it (dense {d:,}) | {kv['bytes']:,} "
          f"({kv['bytes'] / d:.3f}x) | {pd['bytes']:,} ({pd['bytes'] / d:.3f}x) |")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
