"""The knobs of ThinK (and SnapKV eviction before it), validated once."""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

from ..validation import check_int

__all__ = ["EVICTION_METHODS", "SNAPKV_POOL_KERNEL", "ThinKSettings"]

EVICTION_METHODS = ("snapkv",)
# SnapKV's max-pool over token scores (kernel 7, stride 1, "same" padding): a kept token takes
# its neighbours along, so local context survives eviction (docs/think.md: kernel 5-7).
SNAPKV_POOL_KERNEL = 7


@dataclass(frozen=True)
class ThinKSettings:
    """What a ThinK cache does after prefill: the one place ThinK's settings and defaults live.

    :func:`~ponder.kv.apply_think`, :class:`~ponder.kv.ThinKCache` and
    :func:`~ponder.kv.think_generate_reference` take these fields as keyword arguments (or a
    ``settings=`` object) and build them with :meth:`resolve`.

    Attributes
    ----------
    prune_ratio : float
        lambda in [0, 1): the fraction of key channels pruned per KV head; ``T = D - floor(lambda
        * D)`` channels are kept (values keep all ``D``).
    window : int
        The observation window: the last ``window`` prompt queries score the channels (and, with
        SnapKV, the tokens). Tokens, not bytes.
    recent : int
        The last ``recent`` prompt tokens (after eviction) keep full-width keys, as do all the
        generated tokens.
    evict : str or None
        ``"snapkv"`` to evict prompt tokens before pruning channels, or None.
    token_budget : int or None
        With ``evict="snapkv"``: the prompt tokens kept per KV head, observation window included
        (``>= window``); prompts no longer than that are kept whole.
    backend : str or None
        Forces the backend of the :mod:`ponder.ops.think` kernels (``"cpu"``, ``"triton"``,
        ``"torch"``); default by device.
    fold_block : int or None
        If set, generated tokens are pruned too, in blocks: when the full-width store holds
        ``recent + fold_block`` tokens, its oldest ``fold_block`` are pruned with the layer's
        channel mask (the one chosen after prefill). None: generated tokens stay full width.
    """

    prune_ratio: float = 0.4
    window: int = 32
    recent: int = 32
    evict: str | None = None
    token_budget: int | None = None
    backend: str | None = None
    fold_block: int | None = None

    def __post_init__(self) -> None:
        ratio = self.prune_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real):
            raise TypeError(f"ThinK: prune_ratio must be a float, got {type(ratio).__name__}")
        if not 0.0 <= float(ratio) < 1.0:
            raise ValueError(f"ThinK: prune_ratio must be in [0, 1), got {ratio}")
        object.__setattr__(self, "prune_ratio", float(ratio))
        object.__setattr__(self, "window", check_int("ThinK", "window", self.window, 1))
        object.__setattr__(self, "recent", check_int("ThinK", "recent", self.recent, 0))
        if self.evict is not None and self.evict not in EVICTION_METHODS:
            raise ValueError(
                f"ThinK: evict must be None or one of {EVICTION_METHODS}, got {self.evict!r}"
            )
        if self.evict is None:
            if self.token_budget is not None:
                raise ValueError(
                    "ThinK: token_budget is only used with evict='snapkv' (got evict=None)"
                )
        else:
            if self.token_budget is None:
                raise ValueError(f"ThinK: evict={self.evict!r} needs a token_budget")
            budget = check_int("ThinK", "token_budget", self.token_budget, 1)
            if budget < self.window:
                raise ValueError(
                    f"ThinK: token_budget ({budget}) must be >= window ({self.window}): the "
                    "observation window is always kept"
                )
            object.__setattr__(self, "token_budget", budget)
        if self.fold_block is not None:
            object.__setattr__(self, "fold_block", check_int("ThinK", "fold_block", self.fold_block, 1))
        if self.backend is not None and self.backend not in ("cpu", "triton", "cuda", "torch"):
            raise ValueError(
                f"ThinK: backend must be None, 'cpu', 'triton', 'cuda' or 'torch', "
                f"got {self.backend!r}"
            )

    @classmethod
    def resolve(cls, settings: ThinKSettings | None = None, **fields) -> ThinKSettings:
        """``settings`` (None: the defaults) with ``fields`` replaced, validated again.

        Raises:
            TypeError: ``settings`` is not a ThinKSettings, or a field name is unknown.
        """
        if settings is None:
            return cls(**fields)
        if not isinstance(settings, cls):
            raise TypeError(
                f"ThinK: settings must be a ThinKSettings, got {type(settings).__name__}"
            )
        return dataclasses.replace(settings, **fields)
