"""The ThinK cache: channel-pruned keys stored compactly, on transformers' cache classes.

One :class:`ThinKLayer` per decoder layer. During prefill it holds the prompt's keys and values
at full width just long enough for the prefill attention; then (:meth:`ThinKLayer.compress`,
called by ponder's attention function with the prompt's queries) it

1. optionally evicts prompt tokens with SnapKV (:mod:`ponder.kv.snapkv`),
2. scores the key channels of each KV head with the last ``window`` queries
   (:func:`ponder.ops.think.channel_scores`) and keeps the best ``T = D - floor(lambda * D)``,
3. stores the keys of all but the last ``recent`` prompt tokens as ``k_pruned [B, Hkv, Lp, T]``
   with their channel indices ``idx [B, Hkv, T]``, the last ``recent`` prompt tokens (and, later,
   every generated token) as full-width ``k_recent [B, Hkv, Lr, D]``, and all values at full width
   ``v [B, Hkv, Lp + Lr, D]`` (pruned tokens first),

and decoding reads them with :func:`ponder.ops.think.pruned_decode_attention`. The dense keys
are dropped after prefill: the bytes are saved for real (:func:`cache_nbytes` measures them).

With ``fold_block`` set, long generations keep saving: whenever the full-width store holds
``recent + fold_block`` tokens, its oldest ``fold_block`` are pruned with the layer's channel
mask (chosen once, after prefill) and moved to the pruned store. Values never move: the token
order ``[pruned ; recent]`` is kept, only the boundary advances.

Left padding is kept as a per-row count of leading padded tokens (``starts``): after prefill
the first ``starts[b]`` stored tokens of row ``b`` are padding, and are never attended to.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from ..ops import think as think_ops
from . import _compat
from .settings import ThinKSettings
from .snapkv import snapkv_keep

__all__ = ["ThinKCache", "ThinKLayer", "ThinKStep", "cache_nbytes"]

# Spare room added when a full-width store must grow without a capacity hint (tokens), and the
# growth factor: amortised O(1) appends, at most ~1/3 of the store unused.
_GROW_MIN = 64
_GROW_FACTOR = 1.5
# The tensors a layer holds, for the batch operations (beam search) and byte counts.
_HELD = ("keys", "values", "k_pruned_buf", "idx", "k_recent_buf", "v_buf", "starts")


class ThinKStep:
    """What :meth:`ThinKLayer.update` hands to the attention function in place of the keys.

    transformers passes whatever ``Cache.update`` returns straight to the attention function;
    ponder's (:func:`ponder.kv.think_attention`) recognises this and lets the layer attend.
    Any other attention function fails on it: a ThinK cache needs :func:`ponder.kv.apply_think`.
    """

    __slots__ = ("layer",)

    def __init__(self, layer: ThinKLayer) -> None:
        self.layer = layer

    def __repr__(self) -> str:
        return f"ThinKStep({self.layer!r}) (use the model with ponder.kv.apply_think)"

    def _not_a_tensor(self, *args, **kwargs):
        raise RuntimeError(
            "ThinK: a ThinKCache reached an attention function that is not ponder's; call "
            "ponder.kv.apply_think(model) first (or use a DynamicCache)"
        )

    # What other attention functions touch first: fail there with a message that says why.
    shape = property(_not_a_tensor)
    dtype = property(_not_a_tensor)
    size = dim = transpose = _not_a_tensor


def _valid_from_mask(mask: Tensor | None, batch: int, length: int) -> Tensor | None:
    """Which prompt tokens are real (bool ``[B, L]``) from the prefill's 4D mask, None if all.

    The last query sees every real token of its row (causal, left padded), so its mask row is
    the padding mask. Only left padding (pads first) is supported, as ``generate`` makes it.
    """
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dim() != 4:
        raise ValueError(
            "ThinK: expected a 4D attention mask [B, 1, Q, KV] (or None) at prefill, got "
            f"{type(mask).__name__} of shape {getattr(mask, 'shape', None)}"
        )
    last = mask[:, 0, -1, -length:]
    valid = last if last.dtype == torch.bool else last > torch.finfo(last.dtype).min / 2
    valid = valid.expand(batch, length)
    if bool(valid.all()):
        return None
    if length > 1 and not bool((valid[:, 1:] >= valid[:, :-1]).all()):
        raise ValueError(
            "ThinK: only left padding is supported (padding tokens first in each row, as "
            "transformers' generate makes them with tokenizer.padding_side='left')"
        )
    return valid


class ThinKLayer(DynamicLayer):
    """One decoder layer's ThinK cache (see the module docstring).

    Held after prefill: ``k_pruned_buf [B, Hkv, cap_p, T]`` (the first ``n_pruned`` used),
    ``idx [B, Hkv, T]`` int64, ``k_recent_buf [B, Hkv, cap_r, D]`` (the first ``n_recent``
    used), ``v_buf [B, Hkv, cap_v, D]`` (the first ``n_pruned + n_recent`` used), ``starts [B]``
    int64 or None (no padding). Spare capacity exists only with a capacity hint (``generate``
    gives one) or after growth.
    ``seen`` counts every token fed to the layer (evicted ones too): it is what transformers
    calls the sequence length, and positions continue from it.
    """

    is_sliding = False
    is_croppable = True
    is_compileable = False
    supports_early_init = False

    def __init__(self, settings: ThinKSettings, capacity: int | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.capacity = capacity
        # Folding prunes tokens that were full width: a crop cannot bring their channels back.
        self.is_croppable = settings.fold_block is None
        self._clear()

    def _clear(self) -> None:
        self.keys = self.values = None
        self.k_pruned_buf = self.idx = self.k_recent_buf = self.v_buf = self.starts = None
        self.seen = 0
        self.n_pruned = 0
        self.n_recent = 0
        self.compressed = False
        self.evicted = False
        self.is_initialized = False
        self._plan = None
        self._step = ThinKStep(self)

    def __repr__(self) -> str:
        if not self.compressed:
            return f"ThinKLayer(seen={self.seen}, not compressed)"
        return (
            f"ThinKLayer(seen={self.seen}, pruned={self.n_pruned}x{self.idx.shape[-1]}, "
            f"recent={self.n_recent}x{self.k_recent_buf.shape[-1]})"
        )

    @property
    def k_pruned(self) -> Tensor:
        """The used part of the pruned key store, ``[B, Hkv, n_pruned, T]`` (a view)."""
        return self.k_pruned_buf[:, :, : self.n_pruned]

    @property
    def k_recent(self) -> Tensor:
        """The used part of the full-width key store, ``[B, Hkv, n_recent, D]`` (a view)."""
        return self.k_recent_buf[:, :, : self.n_recent]

    @property
    def v(self) -> Tensor:
        """The used part of the value store, ``[B, Hkv, Lp + n_recent, D]`` (a view)."""
        return self.v_buf[:, :, : self.n_pruned + self.n_recent]

    # -- transformers' layer protocol ----------------------------------------------------------

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.device = key_states.device
        self.dtype = key_states.dtype
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs):
        """Take the new tokens' keys and values ``[B, Hkv, S, D]``; return a :class:`ThinKStep`.

        Before the first compression the tokens are held at full width for the prefill
        attention; afterwards they go to the full-width store.
        """
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if not self.compressed:
            if self.keys is not None:
                raise RuntimeError(
                    "ThinK: the prompt was cached but never compressed: the model's attention "
                    "is not ponder's. Call ponder.kv.apply_think(model) before using a ThinKCache"
                )
            self.keys, self.values = key_states, value_states
        else:
            self._append(key_states, value_states)
        self.seen += key_states.shape[-2]
        return self._step, value_states

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length) -> tuple[int, int]:
        # The mask spans every token seen (transformers' 2D attention mask does); ponder's
        # attention reads only its prefill rows, for the padding. (Older transformers pass the
        # cache positions instead of the query length.)
        return self.seen + _compat.query_length(query_length), 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self._clear()

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last ``-tokens_to_remove`` tokens (transformers' convention: negative).

        With the older transformers whose ``crop`` takes the new length, ``tokens_to_remove >= 0``
        is that length (the last ``seen - tokens_to_remove`` tokens go). Tokens leave the
        full-width store first, then the pruned store; a cache that evicted prompt tokens cannot
        be cropped into its prompt (the evicted tokens are gone).
        """
        if tokens_to_remove >= 0 and _compat.CROP_TAKES_LENGTH:
            tokens_to_remove = min(0, int(tokens_to_remove) - self.seen)
        if tokens_to_remove > 0:
            raise ValueError(
                f"ThinK: crop takes a negative number of tokens to remove, got {tokens_to_remove}"
            )
        n = -int(tokens_to_remove)
        if n == 0 or not self.is_initialized:
            return
        if n > self.seen:
            raise ValueError(f"ThinK: cannot crop {n} tokens from a cache of {self.seen}")
        if not self.compressed:
            self.keys = self.keys[..., : self.seen - n, :]
            self.values = self.values[..., : self.seen - n, :]
        elif n <= self.n_recent:
            self.n_recent -= n
        elif self.evicted:
            raise ValueError(
                f"ThinK: cannot crop {n} tokens: only the last {self.n_recent} are still held in "
                "order (SnapKV evicted prompt tokens before them)"
            )
        else:
            self.n_pruned -= n - self.n_recent
            self.n_recent = 0
        self.seen -= n

    def _map(self, fn: Callable[[Tensor], Tensor]) -> None:
        for name in _HELD:
            t = getattr(self, name)
            if isinstance(t, Tensor) and t.dim() > 0:
                setattr(self, name, fn(t))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.is_initialized:
            self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: Tensor) -> None:
        if self.is_initialized:
            self._map(lambda t: t[indices])

    def offload(self) -> None:
        if self.is_initialized:
            self._map(lambda t: t.to("cpu", non_blocking=True))

    def prefetch(self) -> None:
        if self.is_initialized:
            self._map(lambda t: t.to(self.device, non_blocking=True))

    def held_tensors(self) -> list[Tensor]:
        """Every tensor this layer holds (for :func:`cache_nbytes`)."""
        return [t for t in (getattr(self, name) for name in _HELD) if isinstance(t, Tensor)]

    def used_tensors(self) -> list[Tensor]:
        """The parts of them in use: spare capacity of the full-width stores left out."""
        if not self.compressed:
            return self.held_tensors()
        parts = (self.k_pruned, self.idx, self.starts, self.k_recent, self.v)
        return [t for t in parts if isinstance(t, Tensor)]

    # -- ThinK ---------------------------------------------------------------------------------

    def _append(self, k: Tensor, v: Tensor) -> None:
        """Write ``S`` new tokens at full width (growing the stores if full), folding the oldest
        full-width tokens into the pruned store whenever ``recent + fold_block`` are held."""
        s_len = k.shape[-2]
        used = self.n_pruned + self.n_recent
        if used + s_len > self.v_buf.shape[2]:
            self.v_buf = _ensure(self.v_buf, used + s_len, used)
        self.v_buf.narrow(2, used, s_len).copy_(v)
        block = self.settings.fold_block
        if block is None:
            n_recent = self.n_recent
            if n_recent + s_len > self.k_recent_buf.shape[2]:
                self.k_recent_buf = _ensure(self.k_recent_buf, n_recent + s_len, n_recent)
            self.k_recent_buf.narrow(2, n_recent, s_len).copy_(k)
            self.n_recent = n_recent + s_len
            return
        limit = self.settings.recent + block  # the full-width store's fixed size
        done = 0
        while done < s_len:
            take = min(limit - self.n_recent, s_len - done)
            self.k_recent_buf[:, :, self.n_recent:self.n_recent + take] = k[:, :, done:done + take]
            self.n_recent += take
            done += take
            if self.n_recent == limit:
                self._fold(block)

    def _fold(self, block: int) -> None:
        """Prune the oldest ``block`` full-width keys into the pruned store."""
        self.k_pruned_buf = _ensure(self.k_pruned_buf, self.n_pruned + block, self.n_pruned)
        self.k_pruned_buf[:, :, self.n_pruned:self.n_pruned + block] = think_ops.compact_keys(
            self.k_recent_buf[:, :, :block], self.idx
        )
        rest = self.n_recent - block
        self.k_recent_buf[:, :, :rest] = self.k_recent_buf[:, :, block:self.n_recent].clone()
        self.n_pruned += block
        self.n_recent = rest

    def compress(self, query: Tensor, mask: Tensor | None, scale: float) -> None:
        """Evict (optional), score, prune and store the prompt (see the module docstring).

        Args:
            query: ``[B, Hq, S, D]`` the prompt's queries (after RoPE): the last ``S`` prompt
                positions, ``S = L`` at prefill; the last ``min(window, S)`` of them are used.
            mask: the prefill's 4D attention mask (or None: no padding).
            scale: the attention logit scale (SnapKV's softmax uses it).
        """
        st = self.settings
        keys, values = self.keys, self.values
        batch, hkv, length, dim = keys.shape
        valid = _valid_from_mask(mask, batch, length)
        if valid is not None:
            # Padded rows of the prefill may hold anything (a fully masked softmax row is NaN
            # in some SDPA kernels): zero them so they cannot leak through 0 * NaN later.
            keys = keys.masked_fill(~valid[:, None, :, None], 0)
            values = values.masked_fill(~valid[:, None, :, None], 0)
        win = min(st.window, length, query.shape[2])
        q_window = query[:, :, query.shape[2] - win:]
        if valid is not None:
            q_window = q_window.masked_fill(~valid[:, None, length - win:, None], 0)
        n_pad = None if valid is None else (~valid).sum(dim=1)
        self.evicted = st.evict == "snapkv" and length > st.token_budget
        if self.evicted:
            pos = snapkv_keep(q_window, keys, valid, st.token_budget, scale)  # [B, Hkv, K]
            index = pos[..., None].expand(-1, -1, -1, dim)
            keys, values = keys.gather(2, index), values.gather(2, index)
            if n_pad is not None:
                # Padding scores -inf, so every head keeps the same number of pads, first.
                n_pad = (pos[:, 0] < n_pad[:, None]).sum(dim=1)
        scores = think_ops.channel_scores(q_window, keys, backend=st.backend)
        idx = think_ops.select_channels(scores, think_ops.kept_channels(dim, st.prune_ratio))
        kept = keys.shape[2]
        n_recent = min(st.recent, kept)
        n_pruned = kept - n_recent
        # Room for the tokens still to come (capacity hint): the full-width store takes them
        # all, or with folding holds at most recent + fold_block and the pruned store the rest.
        ahead = max(0, self.capacity - length) if self.capacity else 0
        if st.fold_block is None:
            cap_p, cap_r = n_pruned, n_recent + ahead
        else:
            folds = max(0, (n_recent + ahead - st.recent) // st.fold_block)
            cap_p, cap_r = n_pruned + folds * st.fold_block, st.recent + st.fold_block
        self.k_pruned_buf = keys.new_empty(batch, hkv, cap_p, idx.shape[-1])
        self.k_pruned_buf[:, :, :n_pruned] = think_ops.compact_keys(keys[:, :, :n_pruned], idx)
        self.idx = idx
        self.k_recent_buf = keys.new_empty(batch, hkv, cap_r, dim)
        self.k_recent_buf[:, :, :n_recent] = keys[:, :, n_pruned:]
        self.v_buf = values.new_empty(batch, hkv, kept + ahead, values.shape[-1])
        self.v_buf[:, :, :kept] = values
        self.n_pruned = n_pruned
        self.n_recent = n_recent
        self.starts = None if n_pad is None or not bool(n_pad.any()) else n_pad.to(torch.int64)
        self.keys = self.values = None
        self.compressed = True
        # The decode kernel's backend, chosen once: every decode step then calls the kernel
        # without the public op's per-call argument checks (shapes, dtypes, index ranges: they
        # hold by construction from here on, and the native launcher re-checks its bounds).
        self._backend = think_ops.pruned_decode_attention_backend(query, st.backend)

    def attend(self, query: Tensor, scale: float, softcap: float | None = None) -> Tensor:
        """Attention of ``query [B, Hq, S, D]`` (the last ``S`` tokens, already appended) over
        the compressed cache: ``[B, Hq, S, Dv]``. With ``softcap`` (``c * tanh(logits / c)``,
        Gemma2) it runs in plain torch: the kernels have no soft-capping."""
        if softcap is not None:
            return _attend_softcap(query, self, scale, softcap)
        if not (query.requires_grad or torch.compiler.is_compiling()):
            # The per-step fast path: the kernel bound once to the stores (a new plan only when
            # a store was replaced: growth, a fold that grew the pruned store, beam reordering).
            plan = self._plan
            if plan is None or not plan.holds(self.k_pruned_buf, self.idx, self.k_recent_buf,
                                              self.v_buf, self.starts):
                plan = self._plan = think_ops.PrunedDecodePlan(
                    query, self.k_pruned_buf, self.idx, self.k_recent_buf, self.v_buf,
                    self.starts, self._backend,
                )
            return plan(query, self.n_pruned, self.n_recent, scale)
        return think_ops.pruned_decode_attention(
            query, self.k_pruned, self.idx, self.k_recent, self.v, scale=scale,
            starts=self.starts, backend=self.settings.backend,
        )


def _attend_softcap(query: Tensor, layer: ThinKLayer, scale: float, softcap: float) -> Tensor:
    """:meth:`ThinKLayer.attend` in plain torch with logit soft-capping, GQA without expanding
    K/V: ``[B, Hq, S, Dv]``."""
    batch, hq, s_len, dim = query.shape
    hkv = layer.idx.shape[1]
    group = hq // hkv
    q = query.float().reshape(batch, hkv, group * s_len, dim)
    idx = layer.idx[:, :, None, :].expand(-1, -1, group * s_len, -1)
    logits = torch.cat([
        q.gather(-1, idx) @ layer.k_pruned.float().transpose(-1, -2),
        q @ layer.k_recent.float().transpose(-1, -2),
    ], dim=-1) * scale  # [B, Hkv, G * S, N]
    logits = torch.tanh(logits / softcap) * softcap
    n = logits.shape[-1]
    pos = torch.arange(n, device=query.device)
    last = n - s_len + torch.arange(s_len, device=query.device).repeat(group)  # [G * S]
    visible = (pos[None, :] <= last[:, None])[None, None]
    if layer.starts is not None:
        visible = visible & (pos[None, :] >= layer.starts[:, None])[:, None, None, :]
    logits = logits.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    out = probs @ layer.v.float()  # [B, Hkv, G * S, Dv]
    return out.reshape(batch, hq, s_len, -1).to(query.dtype)


def _ensure(buf: Tensor, need: int, used: int) -> Tensor:
    """``buf`` if it holds ``need`` tokens (dim 2), else a larger copy of its first ``used``."""
    cap = buf.shape[2]
    if need <= cap:
        return buf
    out = buf.new_empty(*buf.shape[:2], max(need, int(cap * _GROW_FACTOR) + _GROW_MIN),
                        buf.shape[3])
    out[:, :, :used] = buf[:, :, :used]
    return out


class ThinKCache(DynamicCache):
    """A transformers ``Cache`` of :class:`ThinKLayer` s (ThinK, arXiv 2407.21018).

    Made by ``model.generate`` on a model patched with :func:`ponder.kv.apply_think`; build one
    yourself to call ``model(...)`` step by step::

        cache = ThinKCache(prune_ratio=0.4)
        out = model(input_ids, attention_mask=mask, cache=cache, use_cache=True)

    Args:
        settings: a :class:`ThinKSettings` (None: its defaults).
        max_cache_len: optional capacity hint (tokens: prompt + generated) so that the
            full-width stores are allocated once at their final size instead of grown.
        config: the model's config (``generate`` passes it). With it the layers are laid out
            as ``DynamicCache(config=config)`` lays them out, each full-attention layer a
            :class:`ThinKLayer` and each sliding-window layer transformers' dense window layer
            (needed for models with sliding-window layers). Without it every layer is a
            :class:`ThinKLayer`, made on first use.
        **fields: :class:`ThinKSettings` fields by name (``prune_ratio``, ``window``, ...),
            replacing those of ``settings``.
    """

    def __init__(
        self,
        settings: ThinKSettings | None = None,
        *,
        max_cache_len: int | None = None,
        config=None,
        **fields,
    ) -> None:
        settings = ThinKSettings.resolve(settings, **fields)
        if max_cache_len is not None and (
            isinstance(max_cache_len, bool) or not isinstance(max_cache_len, int)
            or max_cache_len < 1
        ):
            raise ValueError(f"ThinKCache: max_cache_len must be an int >= 1, got {max_cache_len}")
        self.settings = settings
        # Not stored as ``max_cache_len``: some transformers releases make that a read-only
        # property of Cache (the property below overrides it).
        self._capacity = max_cache_len
        make = functools.partial(ThinKLayer, settings, max_cache_len)
        if config is None:  # layers are made on first use (one per decoder layer)
            Cache.__init__(self, layer_class_to_replicate=make)
            return
        layers = [make() if type(layer) is DynamicLayer else layer
                  for layer in DynamicCache(config=config).layers]
        Cache.__init__(self, layers=layers)

    @property
    def is_croppable(self) -> bool:
        """Whether ``crop`` can restore the cache exactly (not after folding). (Older
        transformers have no such property on Cache.)"""
        return all(getattr(layer, "is_croppable", True) for layer in self.layers)

    @property
    def max_cache_len(self) -> int | None:
        """The capacity hint given (tokens), or None."""
        return self._capacity

    def __repr__(self) -> str:
        return f"ThinKCache({self.settings}, layers={self.layers})"


def _unique_nbytes(tensors: Iterable[Tensor]) -> int:
    seen: set[int] = set()
    total = 0
    for t in tensors:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if storage.nbytes() == 0 or key in seen:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def _layer_tensors(layer) -> list[Tensor]:
    if isinstance(layer, ThinKLayer):
        return layer.held_tensors()
    return [t for t in vars(layer).values() if isinstance(t, Tensor)]


def cache_nbytes(cache, *, used: bool = False) -> int:
    """Bytes of memory a cache actually holds: every tensor storage of every layer, once.

    Works for any transformers ``Cache`` (``DynamicCache``, ``StaticCache``, a
    :class:`ThinKCache`, ...; an ``EncoderDecoderCache`` counts both parts). Storages are counted
    whole, so a view of a larger buffer counts the buffer, and spare capacity counts.

    With ``used=True``: only the bytes of the tokens stored, without the spare capacity a
    :class:`ThinKCache` allocates ahead (``generate`` sizes it for ``max_new_tokens``; rows that
    stop early leave it unused). A ``DynamicCache`` has none: both counts agree.
    """
    if hasattr(cache, "self_attention_cache") and hasattr(cache, "cross_attention_cache"):
        return (cache_nbytes(cache.self_attention_cache, used=used)
                + cache_nbytes(cache.cross_attention_cache, used=used))
    if not isinstance(cache, Cache):
        raise TypeError(f"cache_nbytes: expected a transformers Cache, got {type(cache).__name__}")
    if not used:
        return _unique_nbytes(t for layer in cache.layers for t in _layer_tensors(layer))
    return sum(
        t.numel() * t.element_size()
        for layer in cache.layers
        for t in (layer.used_tensors() if isinstance(layer, ThinKLayer) else _layer_tensors(layer))
    )
