"""ThinK for Hugging Face models: a channel-pruned KV cache that really holds fewer bytes.

ThinK (arXiv 2407.21018, METHODS.md) prunes the least useful key channels of each KV head after
prefill, chosen by the last prompt queries; ponder stores the kept channels compactly and decodes
with :func:`ponder.ops.think.pruned_decode_attention`. SnapKV token eviction can run first.

    import ponder.kv
    ponder.kv.apply_think(model, prune_ratio=0.4)      # Llama / Mistral / Qwen2, already loaded
    out = model.generate(**batch, max_new_tokens=64, return_dict_in_generate=True)
    ponder.kv.cache_nbytes(out.cache)                  # bytes held: ~0.8x of the dense cache
    ponder.kv.remove_think(model)

- :mod:`ponder.kv.cache`: :class:`ThinKCache` / :class:`ThinKLayer` and :func:`cache_nbytes`;
- :mod:`ponder.kv.patch`: the attention / mask functions, :func:`apply_think`, :func:`remove_think`;
- :mod:`ponder.kv.snapkv`: SnapKV eviction;
- :mod:`ponder.kv.reference`: the plain-torch reference of the whole method (the tests' oracle).
"""

from .cache import ThinKCache, ThinKLayer, ThinKStep, cache_nbytes
from .patch import (
    ATTN_NAME,
    SUPPORTED_MODEL_TYPES,
    apply_think,
    remove_think,
    think_attention,
    think_settings,
)
from .reference import think_generate_reference
from .settings import ThinKSettings
from .snapkv import snapkv_keep, snapkv_scores

__all__ = [
    "ATTN_NAME",
    "SUPPORTED_MODEL_TYPES",
    "ThinKCache",
    "ThinKLayer",
    "ThinKSettings",
    "ThinKStep",
    "apply_think",
    "cache_nbytes",
    "remove_think",
    "snapkv_keep",
    "snapkv_scores",
    "think_attention",
    "think_generate_reference",
    "think_settings",
]
