"""ThinK for Hugging Face models: a channel-pruned KV cache that really holds fewer bytes.

ThinK (arXiv 2407.21018; docs/think.md) prunes the least useful key channels of each KV head after
prefill, chosen by the last prompt queries; ponder stores the kept channels compactly and decodes
with :func:`ponder.ops.think.pruned_decode_attention`. SnapKV token eviction can run first.

    import ponder.kv
    ponder.kv.apply_think(model, prune_ratio=0.4)      # a loaded HF causal LM (docs/think.md)
    out = model.generate(**batch, max_new_tokens=64, return_dict_in_generate=True)
    ponder.kv.cache_nbytes(out.cache)                  # bytes held: ~0.8x of the dense cache
    ponder.kv.remove_think(model)

- :mod:`ponder.kv.cache`: :class:`ThinKCache` / :class:`ThinKLayer` and :func:`cache_nbytes`;
- :mod:`ponder.kv.patch`: the attention / mask functions, :func:`apply_think`, :func:`remove_think`;
- :mod:`ponder.kv.snapkv`: SnapKV eviction;
- :mod:`ponder.kv.reference`: the plain-torch reference of the whole method (the tests' oracle).
"""

from __future__ import annotations

import importlib

# Lazy (PEP 562): importing ponder.kv (e.g. for the CLI's parser) does not import transformers;
# the first use of a name below does.
_EXPORTS = {
    "ThinKCache": "cache", "ThinKLayer": "cache", "ThinKStep": "cache", "cache_nbytes": "cache",
    "ATTN_NAME": "patch", "SUPPORTED_MODEL_TYPES": "patch", "apply_think": "patch",
    "remove_think": "patch", "ThinKDenseWarning": "patch", "think_attention": "patch",
    "think_settings": "patch",
    "think_generate_reference": "reference", "ThinKSettings": "settings",
    "snapkv_keep": "snapkv", "snapkv_scores": "snapkv",
}
__all__ = [  # noqa: RUF022 (grouped by module, as above)
    "ThinKCache",
    "ThinKLayer",
    "ThinKStep",
    "cache_nbytes",
    "ATTN_NAME",
    "SUPPORTED_MODEL_TYPES",
    "apply_think",
    "remove_think",
    "ThinKDenseWarning",
    "think_attention",
    "think_settings",
    "think_generate_reference",
    "ThinKSettings",
    "snapkv_keep",
    "snapkv_scores",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ponder.kv' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
