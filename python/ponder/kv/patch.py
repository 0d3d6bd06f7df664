"""The Hugging Face patch: ponder's attention and mask functions, and apply_think / remove_think.

transformers' attention modules (Llama, Mistral, Qwen2, ...) call ``cache.update(k, v, layer)``
and pass what it returns to the attention function named by ``config._attn_implementation``. A
:class:`~ponder.kv.cache.ThinKLayer` returns a :class:`~ponder.kv.cache.ThinKStep`; ponder's
attention function (registered as ``"ponder_think"``) sees it and

- at prefill runs SDPA on the full-width prompt, then lets the layer compress itself with the
  prompt's queries (eviction, channel scores, pruning);
- afterwards runs :func:`ponder.ops.think.pruned_decode_attention` on the compact cache.

With any other cache (a ``DynamicCache``, or none) it is transformers' SDPA attention, so a
patched model still runs ``model(...)`` without a ThinK cache. The mask function is transformers'
SDPA mask (padding + causal, bool); it is registered under the same name because transformers
builds no mask at all for an attention name it has no mask function for.
"""

from __future__ import annotations

import inspect
import types

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .. import _backend
from ..ops import think as think_ops
from .cache import ThinKCache, ThinKStep
from .settings import ThinKSettings

__all__ = ["ATTN_NAME", "SUPPORTED_MODEL_TYPES", "apply_think", "remove_think", "think_attention"]

ATTN_NAME = "ponder_think"
# Model families whose attention module calls cache.update then the attention interface with
# (module, q, k, v, mask, scaling=...) and q/k after RoPE; checked by tests/kv.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
_STATE = "_ponder_think"


def think_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key,
    value,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
):
    """transformers attention function: ThinK on a :class:`ThinKCache`, SDPA otherwise.

    Args:
        query: ``[B, Hq, S, D]`` after RoPE.
        key: a :class:`ThinKStep` (ThinK cache) or keys ``[B, Hkv, L, D]``.
        value: values ``[B, Hkv, L, D]`` (ignored with a ThinK cache: the layer holds them).
        attention_mask: bool ``[B, 1, S, L]`` or None (from transformers' SDPA mask).

    Returns:
        ``(out [B, S, Hq, D], None)`` as transformers expects.
    """
    if not isinstance(key, ThinKStep):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if dropout:
        raise ValueError("ThinK attention is for inference: call model.eval() (dropout > 0)")
    layer = key.layer
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if not layer.compressed:
        out, _ = sdpa_attention_forward(
            module, query, layer.keys, layer.values, attention_mask, dropout=0.0, scaling=scale,
        )
        layer.compress(query, attention_mask, scale)
        return out, None
    out = layer.attend(query, scale)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTN_NAME, think_attention)
AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


def _check_model(model) -> None:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"apply_think: model type {model_type!r} ({type(model).__name__}) is not supported; "
            f"ThinK is checked on {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    text = config.get_text_config(decoder=True)
    layer_types = getattr(text, "layer_types", None) or []
    sliding = [t for t in layer_types if t != "full_attention"]
    window = getattr(text, "sliding_window", None)
    if sliding or (model_type == "mistral" and window is not None):
        raise ValueError(
            f"apply_think: sliding-window attention (sliding_window={window}, layer types "
            f"{sorted(set(layer_types))}) is not supported by ThinK; use a full-attention model "
            "(for Mistral, config.sliding_window=None)"
        )


def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
    """``generate``'s cache factory, patched per model: a ThinKCache unless told otherwise.

    The signature of transformers' method (and the name of the cache argument) changed across
    versions: the rest of the arguments are passed through untouched, and read by name.
    """
    original = type(self)._prepare_cache_for_generation
    params = inspect.signature(original).bind(
        self, generation_config, model_kwargs, *args, **kwargs
    ).arguments
    key = "cache" if "cache" in inspect.signature(self.forward).parameters else "past_key_values"
    if (
        model_kwargs.get(key) is None
        and generation_config.use_cache is not False
        and generation_config.cache_implementation in (None, "dynamic")
    ):
        model_kwargs[key] = ThinKCache(
            settings=getattr(self, _STATE)["settings"],
            max_cache_len=params.get("max_cache_length"),
        )
        return None
    return original(self, generation_config, model_kwargs, *args, **kwargs)


def apply_think(model, settings: ThinKSettings | None = None, **fields):
    """Switch a loaded causal LM to ThinK: ``model.generate(...)`` then uses a :class:`ThinKCache`.

    Registers ponder's attention and mask functions (``"ponder_think"``) with transformers'
    ``AttentionInterface`` / ``AttentionMaskInterface``, selects them with
    ``model.set_attn_implementation`` and makes ``generate`` build a ThinK cache (unless a cache
    or another ``cache_implementation`` is given). Undo with :func:`remove_think`; calling it
    again changes the settings.

    Args:
        model: a loaded Llama, Mistral, Qwen2 or Qwen3 ``...ForCausalLM`` (full attention).
        settings: a :class:`ThinKSettings` (None: its defaults).
        **fields: :class:`ThinKSettings` fields by name, replacing those of ``settings``:
            ``prune_ratio`` (lambda in [0, 1), the fraction of key channels pruned; 0.4 saves 20%
            of the KV bytes of the pruned tokens: keys are half of them), ``window``,
            ``recent``, ``evict`` (``"snapkv"``: max-pool kernel 7), ``token_budget``,
            ``backend`` (``"cpu"``, ``"triton"``, ``"torch"``) and ``fold_block``.

    Returns:
        the model (patched in place).

    Raises:
        ValueError / TypeError: bad settings (naming the argument) or an unsupported model.
        BackendUnavailableError: ``backend`` has no ThinK kernel (``"cuda"``) or is not
            available here.
    """
    settings = ThinKSettings.resolve(settings, **fields)
    _check_model(model)
    backend = settings.backend
    if backend is not None:  # refuse now what the first generate would refuse
        for op in think_ops.KERNELS.ops:
            _backend.resolve(op, model.device, backend, think_ops.KERNELS)
    state = getattr(model, _STATE, None)
    if state is None:
        state = {"previous": model.config._attn_implementation}
        setattr(model, _STATE, state)
    state["settings"] = settings
    model.set_attn_implementation(ATTN_NAME)
    model._prepare_cache_for_generation = types.MethodType(_prepare_cache_for_generation, model)
    return model


def remove_think(model):
    """Undo :func:`apply_think`: the previous attention implementation and the default cache.

    A model that was never patched is returned unchanged.
    """
    state = getattr(model, _STATE, None)
    if state is None:
        return model
    model.set_attn_implementation(state["previous"] or "sdpa")
    if "_prepare_cache_for_generation" in vars(model):
        del model._prepare_cache_for_generation
    delattr(model, _STATE)
    return model


def think_settings(model) -> ThinKSettings | None:
    """The settings :func:`apply_think` put on ``model``, or None if it is not patched."""
    state = getattr(model, _STATE, None)
    return None if state is None else state["settings"]
