"""FIRST: efficient trustworthy distillation (arXiv 2408.12168), on ponder's fused LM-head ops.

Three steps (docs/first.md):

1. **Teacher pass**, once: :func:`extract_topk` runs the teacher over the data and stores, per
   response token, its top-k token ids (int32) and log-probabilities (fp16 or fp32), computed by
   :func:`ponder.ops.lm_head.topk_logprobs` from the last hidden states (no ``[tokens, vocab]``
   logits), in safetensors shards; an interrupted pass resumes where it stopped.
   :class:`TopKStore` reads them back.
2. **Trustworthy maximisation**: :func:`ponder.train.calibration.calibrate_temperature` picks the
   teacher temperature ``c`` that minimises the ECE of the rescaled top-k on a validation split.
3. **Training**: :class:`FIRSTTrainer` (a ``transformers.Trainer``) minimises
   ``KL(softmax(teacher_logprobs / c) || student restricted to the same ids)`` with
   :func:`ponder.ops.lm_head.topk_distill_loss` (optionally with the "other" bucket), summed over
   response tokens and divided by the number of response tokens of the whole optimiser step
   (every gradient-accumulation micro-batch, every process).

The same trainer runs the baselines (``mode``): ``"sft"`` (cross-entropy on the data's tokens),
``"kd"`` (forward KL to the full-vocabulary teacher run on the fly, the eager way: both
``[tokens, vocab]`` logits materialised) and ``"topk"`` (the stored top-k with c = 1). ``"first"``
is the top-k loss with the calibrated c.

Data: records ``{"prompt": str, "response": str}``; the training text is ``prompt + response +
eos`` tokenised as ``tokenizer(prompt)`` (with its special tokens) followed by
``tokenizer(response, add_special_tokens=False)`` and the eos id; the response tokens and the eos
are the ones learned (and stored). :func:`tokenize_records` does that; a pre-tokenised example is
``{"input_ids": [...], "labels": [...]}`` with -100 on the positions not learned.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..ops.lm_head import token_logprobs_sum, topk_distill_loss, topk_logprobs
from ..rewards.train import read_jsonl  # JSONL records, for callers of this module
from ..validation import check_int, check_real
from .calibration import calibrate_temperature, summarise

__all__ = [
    "MODES",
    "FIRSTCollator",
    "FIRSTTrainer",
    "TopKStore",
    "calibrate_store",
    "calibrate_temperature",
    "extract_topk",
    "hidden_states_and_head",
    "read_jsonl",
    "tokenize_records",
    "tokenizer_fingerprint",
]

MODES = ("first", "topk", "kd", "sft")
STORE_FORMAT = "ponder-first-topk/1"
_SHARD = "topk-{:05d}.safetensors"


# ----------------------------------------------------------------------------------- data

def tokenize_records(tokenizer, records: Iterable[dict[str, Any]], *,
                     max_length: int | None = None) -> list[dict[str, list[int]]]:
    """``{"prompt", "response"}`` records -> ``{"input_ids", "labels"}`` (lists of ints).

    ``input_ids = tokenizer(prompt) + tokenizer(response, add_special_tokens=False) + [eos]``;
    ``labels`` is ``input_ids`` with -100 on the prompt. ``max_length`` truncates from the right
    (a truncated example loses its eos). Pre-tokenised records (with ``input_ids`` and
    ``labels``) pass through unchanged.
    """
    fn = "tokenize_records"
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"{fn}: the tokenizer has no eos_token_id")
    out = []
    for i, r in enumerate(records):
        if "input_ids" in r and "labels" in r:
            ids, labels = list(r["input_ids"]), list(r["labels"])
        else:
            if not isinstance(r.get("prompt"), str) or not isinstance(r.get("response"), str):
                raise ValueError(f"{fn}: record {i} needs string fields 'prompt' and 'response' "
                                 f"(or 'input_ids' and 'labels'), got keys {sorted(r)}")
            prompt = tokenizer(r["prompt"])["input_ids"]
            response = tokenizer(r["response"], add_special_tokens=False)["input_ids"] + [eos]
            ids, labels = prompt + response, [-100] * len(prompt) + response
        if len(ids) != len(labels):
            raise ValueError(f"{fn}: record {i} has {len(ids)} input_ids but {len(labels)} labels")
        if max_length is not None:
            ids, labels = ids[:max_length], labels[:max_length]
        out.append({"input_ids": ids, "labels": labels})
    return out


def _as_examples(fn: str, data, tokenizer) -> list[dict[str, list[int]]]:
    data = list(data)
    if not data:
        raise ValueError(f"{fn}: data is empty")
    if all(isinstance(r, dict) and "input_ids" in r and "labels" in r for r in data):
        return tokenize_records(tokenizer, data) if tokenizer is not None else [
            {"input_ids": list(r["input_ids"]), "labels": list(r["labels"])} for r in data]
    if tokenizer is None:
        raise ValueError(f"{fn}: data holds prompt/response records: pass the tokenizer")
    return tokenize_records(tokenizer, data)


def _response_count(labels: Sequence[int]) -> int:
    """Tokens learned in one example: positions t >= 1 with a label (predicted from t - 1)."""
    return sum(1 for y in labels[1:] if y != -100)


def _data_fingerprint(examples: Sequence[dict[str, list[int]]]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e["input_ids"], e["labels"]]).encode())
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's vocabulary (token -> id): equal for tokenizers that share one."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


def _pad(examples: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, Tensor]:
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):  # right padding: position t still predicts t + 1
        n = len(e["input_ids"])
        ids[row, :n] = torch.tensor(e["input_ids"])
        labels[row, :n] = torch.tensor(e["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


# ------------------------------------------------------------------------ the model's head

def _unwrap(model):
    while hasattr(model, "module"):  # DDP / accelerate wrappers
        model = model.module
    return model


def _head(fn: str, model) -> tuple[Tensor, Tensor | None]:
    head = _unwrap(model).get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise TypeError(f"{fn}: the model's output embeddings must be a torch.nn.Linear (logits = "
                        f"hidden @ weight.T + bias), got {type(head).__name__}")
    return head.weight, head.bias


def hidden_states_and_head(fn: str, model, input_ids: Tensor, attention_mask: Tensor):
    """``(hidden [B, L, H], weight [V, H], bias [V] or None)``: the last hidden states of a
    causal LM (after its final norm) and its LM head, without the ``[B, L, V]`` logits.

    The forward goes through ``model`` itself (so DDP's gradient hooks see it) with
    ``logits_to_keep=1``; the one position of logits it returns checks that the logits really are
    ``hidden @ weight.T + bias`` (a model with soft-capped or scaled logits is refused, since the
    fused ops would compute something else).
    """
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                logits_to_keep=1, use_cache=False)
    hidden = out.hidden_states[-1]
    weight, bias = _head(fn, model)
    with torch.no_grad():
        last = torch.nn.functional.linear(hidden[:, -1].float(), weight.float(),
                                          None if bias is None else bias.float())
        got = out.logits[:, -1].float()
        if not torch.allclose(last, got, rtol=1e-2, atol=1e-2 * (1 + got.abs().max().item())):
            raise ValueError(f"{fn}: the model's logits are not lm_head(last hidden state) "
                             "(soft-capped or scaled logits?); FIRST's fused ops cannot train it")
    return hidden, weight, bias


def _check_vocab(fn: str, tokenizer, vocab: int, who: str) -> None:
    if tokenizer is not None and len(tokenizer) > vocab:
        raise ValueError(f"{fn}: vocabulary mismatch: the tokenizer has {len(tokenizer)} tokens "
                         f"but the {who}'s LM head has {vocab} rows; the teacher and the student "
                         "must share a tokenizer and vocabulary")


# -------------------------------------------------------------------------------- the store

class TopKStore:
    """The teacher's stored top-k (written by :func:`extract_topk`), read lazily by shard.

    ``store[i]`` is example ``i``'s ``(ids [T_i, k] int64, logprobs [T_i, k] float32,
    targets [T_i] int64)`` for its ``T_i`` response tokens, in order; ``store.meta`` is the
    ``meta.json`` (k, dtype, vocab_size, counts, the captured-mass summary).
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"TopKStore: no meta.json in {self.folder}: not a top-k store "
                                    "(write one with ponder.train.first.extract_topk)")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != STORE_FORMAT:
            raise ValueError(f"TopKStore: {self.folder} has format {self.meta.get('format')!r}, "
                             f"expected {STORE_FORMAT!r}")
        if not self.meta.get("complete"):
            raise ValueError(f"TopKStore: {self.folder} is incomplete (an interrupted extraction): "
                             "run extract_topk again with the same arguments to finish it")
        self.k = int(self.meta["k"])
        self.vocab_size = int(self.meta["vocab_size"])
        self._shard_size = int(self.meta["shard_size"])
        self._handles: dict[int, tuple[Any, list[int]]] = {}

    def __len__(self) -> int:
        return int(self.meta["examples"])

    def shard_paths(self) -> list[Path]:
        return [self.folder / _SHARD.format(j) for j in range(int(self.meta["shards"]))]

    def _shard(self, j: int):
        # Open handles, read by slices: a random-order training run touches every shard at
        # every step, and loading whole shards per example would read the store over and over.
        if j not in self._handles:
            from safetensors import safe_open

            handle = safe_open(str(self.folder / _SHARD.format(j)), "pt")
            self._handles[j] = (handle, handle.get_tensor("offsets").tolist())
        return self._handles[j]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        i = check_int("TopKStore", "index", i, minimum=0, maximum=len(self) - 1)
        handle, offsets = self._shard(i // self._shard_size)
        a, b = offsets[i % self._shard_size], offsets[i % self._shard_size + 1]
        return (handle.get_slice("ids")[a:b].long(), handle.get_slice("logprobs")[a:b].float(),
                handle.get_slice("targets")[a:b].long())

    def all(self) -> dict[str, Tensor]:
        """Every stored token: ``ids``, ``logprobs``, ``targets``, ``mass`` concatenated."""
        from safetensors.torch import load_file

        parts = [load_file(str(p)) for p in self.shard_paths()]
        return {name: torch.cat([p[name] for p in parts])
                for name in ("ids", "logprobs", "targets", "mass")}

    def nbytes(self) -> int:
        """Bytes of the shard files on disk."""
        return sum(p.stat().st_size for p in self.shard_paths())


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


@torch.no_grad()
def extract_topk(teacher, data, k: int = 5, *, out_dir: str | Path, tokenizer=None,
                 dtype: torch.dtype = torch.float16, batch_size: int = 16,
                 shard_size: int = 4096, progress: bool = False,
                 overwrite: bool = False) -> dict[str, Any]:
    """The teacher pass: store the teacher's top-k for every response token of ``data``.

    Args:
        teacher: a causal LM (``transformers``) whose logits are ``lm_head(last hidden state)``;
            run in eval mode, on its own device, without gradients.
        data: records ``{"prompt", "response"}`` (needs ``tokenizer``) or pre-tokenised
            ``{"input_ids", "labels"}`` (see :func:`tokenize_records`).
        k: ids kept per token (the paper's 5).
        out_dir: the store's folder: ``meta.json`` and ``topk-NNNNN.safetensors`` shards of
            ``shard_size`` examples, each with ``ids [T, k]`` int32, ``logprobs [T, k]``
            (``dtype``), ``targets [T]`` int32 (the data's token), ``mass [T]`` float32 (the
            probability the k ids hold) and ``offsets [n + 1]`` int64 (example i's tokens are
            rows ``offsets[i]:offsets[i + 1]``).
        tokenizer: the teacher's tokenizer (its vocabulary must fit the teacher's head; its
            fingerprint is stored so the student can be checked against it).
        dtype: ``torch.float16`` (half the bytes; about 1e-3 relative rounding) or
            ``torch.float32``.
        batch_size: examples per teacher forward.
        progress: a tqdm bar over the shards.
        overwrite: start again when ``out_dir`` holds a store of other data or settings (by
            default that is an error); a store of the same data and settings is resumed: shards
            already written are kept (each shard is written to a temporary name, then renamed).

    Returns:
        The ``meta.json`` contents: ``examples``, ``tokens``, ``k``, ``dtype``, ``vocab_size``,
        ``bytes`` (shard files), ``full_logits_bytes`` (the same tokens' full fp16 and fp32
        logits), ``mass`` (mean, min, percentiles of the captured probability) and
        ``mass_histogram`` (10 equal bins of [0, 1]), ``shards_computed`` (this call).
    """
    fn = "extract_topk"
    from safetensors.torch import save_file

    k = check_int(fn, "k", k, minimum=1)
    batch_size = check_int(fn, "batch_size", batch_size, minimum=1)
    shard_size = check_int(fn, "shard_size", shard_size, minimum=1)
    if dtype not in (torch.float16, torch.float32):
        raise TypeError(f"{fn}: dtype must be torch.float16 or torch.float32, got {dtype}")
    examples = _as_examples(fn, data, tokenizer)
    weight, _ = _head(fn, teacher)
    vocab = int(weight.shape[0])
    if k > vocab:
        raise ValueError(f"{fn}: k must be <= the vocabulary size {vocab}, got {k}")
    _check_vocab(fn, tokenizer, vocab, "teacher")
    top_id = max(max(e["input_ids"]) for e in examples)
    if top_id >= vocab:
        raise ValueError(f"{fn}: vocabulary mismatch: the data holds token id {top_id} but the "
                         f"teacher's LM head has {vocab} rows")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_shards = -(-len(examples) // shard_size)
    settings = {
        "format": STORE_FORMAT, "k": k, "dtype": str(dtype).removeprefix("torch."),
        "vocab_size": vocab, "examples": len(examples), "shard_size": shard_size,
        "shards": n_shards, "data_sha256": _data_fingerprint(examples),
        "tokenizer_sha256": None if tokenizer is None else tokenizer_fingerprint(tokenizer),
        "teacher": str(getattr(getattr(_unwrap(teacher), "config", None), "_name_or_path", "")),
    }
    meta_path = out / "meta.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        same = all(old.get(key) == value for key, value in settings.items() if key != "teacher")
        if not same and not overwrite:
            diff = [key for key, value in settings.items()
                    if key != "teacher" and old.get(key) != value]
            raise ValueError(f"{fn}: {out} already holds a store of other data or settings "
                             f"(differs in {diff}); pass overwrite=True or another out_dir")
        if not same:
            for p in out.glob("topk-*.safetensors"):
                p.unlink()
    _write_json(meta_path, {**settings, "complete": False})

    was_training = teacher.training
    teacher.eval()
    device = weight.device
    pad_id = 0
    todo = [j for j in range(n_shards) if not (out / _SHARD.format(j)).is_file()]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_shards, initial=n_shards - len(todo), desc="teacher top-k",
                   unit="shard")
    try:
        for j in todo:
            part = examples[j * shard_size:(j + 1) * shard_size]
            ids_l, lp_l, tgt_l, mass_l, offsets = [], [], [], [], [0]
            for start in range(0, len(part), batch_size):
                batch = _pad(part[start:start + batch_size], pad_id)
                input_ids = batch["input_ids"].to(device)
                hidden, w, b = hidden_states_and_head(fn, teacher, input_ids,
                                                      batch["attention_mask"].to(device))
                labels = batch["labels"].to(device)
                resp = labels[:, 1:] != -100
                rows = hidden[:, :-1][resp]
                top = topk_logprobs(rows, w, k, b)
                ids_l.append(top.ids.to("cpu", torch.int32))
                lp_l.append(top.logprobs.to("cpu", dtype))
                mass_l.append(top.mass.to("cpu", torch.float32))
                tgt_l.append(labels[:, 1:][resp].to("cpu", torch.int32))
                for n in resp.sum(1).tolist():
                    offsets.append(offsets[-1] + n)
            tensors = {
                "ids": torch.cat(ids_l).contiguous(),
                "logprobs": torch.cat(lp_l).contiguous(),
                "targets": torch.cat(tgt_l).contiguous(),
                "mass": torch.cat(mass_l).contiguous(),
                "offsets": torch.tensor(offsets, dtype=torch.int64),
            }
            tmp = out / (_SHARD.format(j) + ".tmp")
            save_file(tensors, str(tmp))
            os.replace(tmp, out / _SHARD.format(j))
            if bar is not None:
                bar.update(1)
    finally:
        teacher.train(was_training)
        if bar is not None:
            bar.close()

    from safetensors import safe_open

    masses, tokens, nbytes = [], 0, 0
    for j in range(n_shards):
        path = out / _SHARD.format(j)
        with safe_open(str(path), "pt") as f:
            mass = f.get_tensor("mass")
        masses.append(mass)
        tokens += mass.numel()
        nbytes += path.stat().st_size
    mass = torch.cat(masses)
    hist = torch.histc(mass.double().clamp(0, 1), bins=10, min=0.0, max=1.0)
    meta = {
        **settings, "complete": True, "tokens": tokens, "bytes": nbytes,
        "full_logits_bytes": {"float16": tokens * vocab * 2, "float32": tokens * vocab * 4},
        "mass": summarise(mass), "mass_histogram": [int(x) for x in hist.tolist()],
        "shards_computed": len(todo),
    }
    _write_json(meta_path, meta)
    return meta


# ------------------------------------------------------------------------------ training

class FIRSTCollator:
    """Pads a batch (right) and, for the top-k modes, attaches the stored teacher rows.

    Each feature is ``{"input_ids", "labels", "index"}`` (``index`` = the example's row in the
    store). The batch gets ``input_ids``, ``attention_mask``, ``labels`` ``[B, L]`` and, with a
    store, ``teacher_ids`` ``[T, k]`` int64 and ``teacher_logprobs`` ``[T, k]`` float32 for the
    batch's ``T`` response tokens in order (example by example, position by position).
    """

    def __init__(self, store: TopKStore | None = None, pad_id: int = 0,
                 other_bucket: bool = False):
        self.store = store
        self.pad_id = pad_id
        self.other_bucket = other_bucket

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Tensor]:
        batch = _pad(features, self.pad_id)
        if self.store is None:
            return batch
        ids, lps = [], []
        for f in features:
            t_ids, t_lp, t_tgt = self.store[int(f["index"])]
            want = _response_count(f["labels"])
            if t_ids.shape[0] != want:
                raise ValueError(f"FIRSTCollator: example {f['index']} has {want} response tokens "
                                 f"but the store holds {t_ids.shape[0]} rows for it: the store was "
                                 "extracted from other data")
            ids.append(t_ids)
            lps.append(t_lp)
        lp = torch.cat(lps)
        if self.other_bucket:
            # fp16 rounding can push the stored mass a little over 1, which the other bucket's
            # log(1 - mass) refuses: renormalise those rows onto exactly 1 (a ~1e-3 change).
            lp = lp - torch.logsumexp(lp, dim=-1, keepdim=True).clamp(min=0)
        batch["teacher_ids"] = torch.cat(ids)
        batch["teacher_logprobs"] = lp
        return batch


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, examples: Sequence[dict[str, list[int]]]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.examples[i], "index": i}


def _trainer_base():
    try:
        from transformers import Trainer
    except ImportError as err:  # pragma: no cover - the train extra installs it
        raise ImportError("ponder.train.first needs transformers: pip install 'ponder[train]'") \
            from err
    return Trainer


class FIRSTTrainer(_trainer_base()):
    """``transformers.Trainer`` for FIRST and its baselines.

    Args:
        model: the student (a causal LM whose logits are ``lm_head(last hidden state)``).
        args: ``transformers.TrainingArguments`` (``remove_unused_columns`` is turned off: the
            collator needs each example's index into the store).
        train_dataset: examples ``{"input_ids", "labels"}`` (:func:`tokenize_records`), in the
            order of the store.
        mode: ``"first"`` (top-k KD with ``temperature_c``), ``"topk"`` (top-k KD, c = 1),
            ``"kd"`` (full-vocabulary forward KL to ``teacher``, run on the fly) or ``"sft"``.
        store: a :class:`TopKStore` (or its folder) for ``"first"`` and ``"topk"``.
        temperature_c: FIRST's teacher temperature (from ``calibrate_temperature``); the store's
            ``meta["temperature_c"]`` when it has one and this is None, else 1.
        other_bucket: add the "other" bucket to the top-k loss.
        teacher: the teacher model for ``"kd"``.
        tokenizer: checked against the store's tokenizer fingerprint when given.
        chunk_tokens: token rows per block of the fused losses that pass over the vocabulary
            (``"sft"``, and the top-k modes with ``other_bucket``); None: the op's default
            (64 MiB of float32 logits per block, 110 rows at V = 151936). Larger blocks read the
            head fewer times for more memory (docs/first.md, "Benchmark").

    The loss of a micro-batch is its sum over response tokens divided by the response tokens of
    the whole optimiser step (all accumulation micro-batches, all processes, counted before the
    step), times the number of processes (DDP averages gradients over processes). So the
    gradient is that of the per-token mean over the global batch however the batch is split;
    ``loss_is_scaled_for_ga`` tells the Trainer not to divide again.
    """

    loss_is_scaled_for_ga = True

    def __init__(self, model=None, args=None, train_dataset=None, *, mode: str = "first",
                 store: TopKStore | str | Path | None = None, temperature_c: float | None = None,
                 other_bucket: bool = False, teacher=None, tokenizer=None,
                 chunk_tokens: int | None = None, **kwargs):
        fn = "FIRSTTrainer"
        if mode not in MODES:
            raise ValueError(f"{fn}: mode must be one of {MODES}, got {mode!r}")
        if not isinstance(other_bucket, bool):
            raise TypeError(f"{fn}: other_bucket must be a bool, got {type(other_bucket).__name__}")
        if isinstance(store, (str, Path)):
            store = TopKStore(store)
        if mode in ("first", "topk") and store is None:
            raise ValueError(f"{fn}: mode {mode!r} needs the teacher's top-k store (store=...)")
        if mode == "kd" and teacher is None:
            raise ValueError(f"{fn}: mode 'kd' needs the teacher model (teacher=...)")
        if mode != "first":
            c = 1.0
            if temperature_c not in (None, 1, 1.0):
                raise ValueError(f"{fn}: temperature_c is FIRST's; mode {mode!r} uses c = 1")
        elif temperature_c is None:
            c = float(store.meta.get("temperature_c", 1.0))
        else:
            c = check_real(fn, "temperature_c", temperature_c, positive=True)
        weight, _ = _head(fn, model)
        vocab = int(weight.shape[0])
        _check_vocab(fn, tokenizer, vocab, "student")
        if store is not None and mode in ("first", "topk"):
            if store.vocab_size != vocab:
                raise ValueError(f"{fn}: vocabulary mismatch: the store's teacher has "
                                 f"{store.vocab_size} tokens, the student's LM head {vocab}")
            stored = store.meta.get("tokenizer_sha256")
            if tokenizer is not None and stored is not None and \
                    stored != tokenizer_fingerprint(tokenizer):
                raise ValueError(f"{fn}: vocabulary mismatch: the tokenizer is not the one the "
                                 "store was extracted with (another vocabulary)")
        if teacher is not None and mode == "kd":
            t_vocab = int(_head(fn, teacher)[0].shape[0])
            if t_vocab != vocab:
                raise ValueError(f"{fn}: vocabulary mismatch: the teacher has {t_vocab} tokens, "
                                 f"the student {vocab}")
        self.mode, self.store, self.temperature_c = mode, store, c
        if chunk_tokens is not None:
            chunk_tokens = check_int(fn, "chunk_tokens", chunk_tokens, minimum=1)
        self.other_bucket, self.teacher = other_bucket, teacher
        self.chunk_tokens = chunk_tokens
        self._step_tokens: float | None = None
        if train_dataset is not None and not isinstance(train_dataset, _Indexed):
            train_dataset = _Indexed(list(train_dataset))
        kwargs.setdefault("data_collator", FIRSTCollator(
            store if mode in ("first", "topk") else None,
            pad_id=getattr(getattr(model, "config", None), "pad_token_id", None) or 0,
            other_bucket=other_bucket))
        if args is not None and args.remove_unused_columns:
            # the Trainer would drop "index" (not a forward argument) before the collator
            args.remove_unused_columns = False
        super().__init__(model=model, args=args, train_dataset=train_dataset, **kwargs)
        if self.teacher is not None:
            self.teacher.to(self.args.device).eval().requires_grad_(False)

    # The count of the whole optimiser step, taken when the Trainer collects its micro-batches.
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        local = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batch_samples)
        total = torch.tensor(float(local), device=device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(total)
        self._step_tokens = float(total)
        return batch_samples, num_items

    def _token_loss_sum(self, model, inputs) -> Tensor:
        fn = "FIRSTTrainer"
        labels = inputs["labels"]
        hidden, weight, bias = hidden_states_and_head(fn, model, inputs["input_ids"],
                                                      inputs["attention_mask"])
        resp = labels[:, 1:] != -100
        rows = hidden[:, :-1][resp]
        targets = labels[:, 1:][resp]
        if self.mode == "sft":
            # A plain sum of log-probabilities: the fused scalar loss (gradient computed in the
            # forward, 3 matrix products, against 4 for the per-token op then a sum).
            return -token_logprobs_sum(rows, weight, targets, bias=bias,
                                       chunk_tokens=self.chunk_tokens)
        if self.mode in ("first", "topk"):
            t_ids, t_lp = inputs["teacher_ids"], inputs["teacher_logprobs"]
            if t_ids.shape[0] != rows.shape[0]:
                raise ValueError(f"{fn}: {rows.shape[0]} response tokens but {t_ids.shape[0]} "
                                 "teacher rows")
            return topk_distill_loss(rows, weight, t_ids, t_lp, self.temperature_c,
                                     self.other_bucket, "sum", bias=bias,
                                     chunk_tokens=self.chunk_tokens)
        # "kd": the eager full-vocabulary baseline, both [T, V] logits materialised.
        with torch.no_grad():
            t_logits = self.teacher(input_ids=inputs["input_ids"],
                                    attention_mask=inputs["attention_mask"],
                                    use_cache=False).logits[:, :-1][resp].float()
            t_logp = torch.log_softmax(t_logits, dim=-1)
        s_logp = torch.log_softmax(
            torch.nn.functional.linear(rows.float(), weight.float(),
                                       None if bias is None else bias.float()), dim=-1)
        return (t_logp.exp() * (t_logp - s_logp)).sum()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss_sum = self._token_loss_sum(model, inputs)
        if model.training and self._step_tokens is not None:
            scale = self.args.world_size / max(self._step_tokens, 1.0)
        else:  # evaluation: this batch's own per-token mean
            scale = 1.0 / max(int((inputs["labels"][:, 1:] != -100).sum()), 1)
        loss = loss_sum * scale
        return (loss, {"loss": loss}) if return_outputs else loss


def calibrate_store(store: TopKStore | str | Path, **kwargs) -> dict[str, Any]:
    """:func:`calibrate_temperature` on every token of a (validation) store; returns
    ``{"temperature_c", "ece", "ece_at_1", "tried", "tokens"}``."""
    if not isinstance(store, TopKStore):
        store = TopKStore(store)
    t = store.all()
    found = calibrate_temperature(t["ids"], t["logprobs"].float(), t["targets"], **kwargs)
    return {"temperature_c": found.temperature_c, "ece": found.ece, "ece_at_1": found.ece_at_1,
            "tried": found.tried, "tokens": int(t["ids"].shape[0])}
