"""What changed across the transformers versions ponder.kv supports (pyproject's ``hf`` extra).

Checked by feature, not by version number, so that a release in between behaves as the one it
resembles. The lower bound is tested in CI (a second environment, ``.ci/run``).

- The cache keyword of ``forward`` / ``generate``: ``cache=`` (newer) or ``past_key_values=``;
  the output field likewise.
- ``CacheLayerMixin.crop``: newer releases take minus the tokens to remove (and refuse a positive
  count); older ones take the new length (or, negative, minus the tokens to remove).
- ``get_mask_sizes``: newer releases pass the query length (int), older the cache positions.
"""

from __future__ import annotations

import inspect

from transformers.cache_utils import DynamicLayer

__all__ = ["CROP_TAKES_LENGTH", "cache_kwarg", "output_cache", "query_length"]

# True where crop(n >= 0) means "keep the first n tokens" (the older convention).
CROP_TAKES_LENGTH = "max_length" in inspect.signature(DynamicLayer.crop).parameters


def cache_kwarg(model) -> str:
    """The name under which ``model.forward`` takes its cache: ``"cache"`` or
    ``"past_key_values"``."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def output_cache(out):
    """The cache of a model output or of ``generate``'s dict output (either name)."""
    cache = out.get("cache") if hasattr(out, "get") else getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    return cache


def query_length(arg) -> int:
    """``get_mask_sizes``' argument as a query length (an int, or the cache positions)."""
    return arg if isinstance(arg, int) else int(arg.shape[0])
