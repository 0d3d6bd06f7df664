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
import warnings

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, DynamicSlidingWindowLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .. import _backend
from ..ops import think as think_ops
from ._compat import cache_kwarg
from .cache import ThinKCache, ThinKStep
from .settings import ThinKSettings

__all__ = [
    "ATTN_NAME", "SUPPORTED_MODEL_TYPES", "ThinKDenseWarning", "apply_think", "remove_think",
    "think_attention",
]

ATTN_NAME = "ponder_think"
# The model families checked against the reference by tests/kv (docs/think.md has the table).
# Any other decoder-only model whose attention goes through transformers' attention registry
# (cache.update, then the attention function with q/k after RoPE) takes the same generic path.
SUPPORTED_MODEL_TYPES = (
    "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "olmo2", "cohere",
    "granite", "qwen2_moe", "mixtral",
)
_STATE = "_ponder_think"
# Attention-function arguments ThinK cannot honour (attention sinks): refused, never ignored.
_UNSUPPORTED_KWARGS = ("s_aux", "sinks")


class ThinKDenseWarning(UserWarning):
    """A model patched with :func:`apply_think` is running dense: a cache that is not a
    :class:`ThinKCache` (an explicit ``DynamicCache`` / ``StaticCache``, or one that
    ``generate(cache_implementation=...)`` built). Issued once per model and kind."""


def _eager_attention(query, key, value, attention_mask, scale: float, softcap: float | None):
    """Dense attention in plain torch with logit soft-capping (SDPA has none): ``[B, S, Hq, Dv]``.

    ``key`` / ``value`` ``[B, Hkv, N, D]`` (GQA: repeated here); ``attention_mask`` bool
    ``[B, 1, S, N]`` (True: attend) or None (causal, the queries being the last ``S`` tokens).
    """
    group = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(group, dim=1) if group > 1 else key
    v = value.repeat_interleave(group, dim=1) if group > 1 else value
    logits = (query.float() @ k.float().transpose(-1, -2)) * scale
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    s_len, n = query.shape[2], key.shape[2]
    if attention_mask is None:
        visible = torch.arange(n, device=query.device)[None, :] <= (
            n - s_len + torch.arange(s_len, device=query.device)[:, None])
    elif attention_mask.dtype == torch.bool:
        visible = attention_mask[..., -n:]
    else:
        visible = attention_mask[..., -n:] > torch.finfo(attention_mask.dtype).min / 2
    logits = logits.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    out = probs @ v.float()
    return out.to(query.dtype).transpose(1, 2).contiguous()


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
    """transformers attention function: ThinK on a :class:`ThinKCache` layer, dense otherwise.

    Dense (a ``DynamicCache``, no cache, or a sliding-window layer of a ThinK cache) is
    transformers' SDPA, or plain-torch attention when the model soft-caps its logits
    (``softcap``: Gemma2), which SDPA cannot do.

    Args:
        query: ``[B, Hq, S, D]`` after RoPE.
        key: a :class:`ThinKStep` (ThinK cache) or keys ``[B, Hkv, L, D]``.
        value: values ``[B, Hkv, L, D]`` (ignored with a ThinK cache: the layer holds them).
        attention_mask: bool ``[B, 1, S, L]`` or None (from transformers' SDPA mask).
        scaling: the logit scale (None: ``D ** -0.5``); ``softcap`` (kwargs): ``c`` of
            ``c * tanh(logits / c)`` or None.

    Returns:
        ``(out [B, S, Hq, D], None)`` as transformers expects.
    """
    for name in _UNSUPPORTED_KWARGS:
        if kwargs.get(name) is not None:
            raise ValueError(
                f"ThinK: this model's attention passes {name!r} (attention sinks), which ponder's "
                "ThinK attention does not implement; call ponder.kv.remove_think(model)"
            )
    softcap = kwargs.pop("softcap", None)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if not isinstance(key, ThinKStep):
        if softcap is not None:
            if dropout:
                raise ValueError(
                    "ThinK attention is for inference: call model.eval() (dropout > 0)"
                )
            return _eager_attention(query, key, value, attention_mask, scale, softcap), None
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if dropout:
        raise ValueError("ThinK attention is for inference: call model.eval() (dropout > 0)")
    if kwargs.get("sliding_window") is not None:
        raise RuntimeError(
            "ThinK: a ThinKCache layer reached a sliding-window attention layer: build the cache "
            "with ponder.kv.ThinKCache(..., config=model.config) (generate does) so that "
            "sliding-window layers keep transformers' dense window cache"
        )
    layer = key.layer
    if not layer.compressed:
        if softcap is None:
            out, _ = sdpa_attention_forward(
                module, query, layer.keys, layer.values, attention_mask, dropout=0.0,
                scaling=scale,
            )
        else:
            out = _eager_attention(query, layer.keys, layer.values, attention_mask, scale, softcap)
        layer.compress(query, attention_mask, scale)
        return out, None
    out = layer.attend(query, scale, softcap=softcap)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTN_NAME, think_attention)
AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


def _layer_plan(model) -> list[str]:
    """What each decoder layer's cache is under ThinK: ``"think"`` or ``"window"`` (transformers'
    dense sliding-window layer), as ``DynamicCache(config=...)`` lays them out; raises
    ValueError naming why a model cannot take ThinK."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    name = f"apply_think: model type {model_type!r} ({type(model).__name__})"
    if config is None or not hasattr(config, "get_text_config"):
        raise ValueError(f"{name} is not a transformers model (no config)")
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"{name} is not supported: ThinK is for decoder-only causal LMs "
                         "(this one is an encoder-decoder)")
    if not getattr(model, "_supports_attention_backend", False):
        raise ValueError(
            f"{name} is not supported: its attention does not go through transformers' "
            "attention-function registry (AttentionInterface), which is where ThinK plugs in"
        )
    layers = DynamicCache(config=config).layers
    plan = []
    for i, layer in enumerate(layers):
        if type(layer) is DynamicLayer:
            plan.append("think")
        elif type(layer) is DynamicSlidingWindowLayer:
            plan.append("window")
        else:
            raise ValueError(
                f"{name} is not supported: layer {i} caches with {type(layer).__name__}; ThinK "
                "handles full-attention and sliding-window attention layers only"
            )
    if plan and "think" not in plan:
        text = config.get_text_config(decoder=True)
        raise ValueError(
            f"{name} is not supported: every layer uses sliding-window attention "
            f"(sliding_window={getattr(text, 'sliding_window', None)}), whose cache transformers "
            "already bounds to the window; ThinK prunes full-attention layers only (for Mistral, "
            "set config.sliding_window=None if the prompts fit the context)"
        )
    return plan


def _check_model(model) -> None:
    _layer_plan(model)


_DENSE_HINT = (
    "leave cache_implementation unset (or 'dynamic') and pass no cache to generate, or pass a "
    "ponder.kv.ThinKCache(config=model.config) to model(...)"
)


def _warn_dense_once(model, key: str, message: str) -> None:
    warned = getattr(model, _STATE)["warned"]
    if key not in warned:
        warned.add(key)
        warnings.warn(message, ThinKDenseWarning, stacklevel=4)


def _forward_pre_hook(model, args, kwargs):
    """Say when a patched model is about to run without ThinK (see :class:`ThinKDenseWarning`),
    and refuse ``output_attentions`` (ThinK's decode computes no attention weights)."""
    if model.config._attn_implementation != ATTN_NAME:  # e.g. the reference, switched meanwhile
        return None
    if kwargs.get("output_attentions", getattr(model.config, "output_attentions", False)):
        raise ValueError(
            "ThinK: output_attentions=True is not supported: ponder's ThinK attention computes "
            "no attention weights (the decode kernel never forms them); call "
            "ponder.kv.remove_think(model) and use attn_implementation='eager' to get them"
        )
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if isinstance(cache, Cache) and not isinstance(cache, ThinKCache):
        kind = type(cache).__name__
        _warn_dense_once(
            model, f"cache:{kind}",
            f"ThinK: this patched model got a {kind} (passed in, or built by generate's "
            f"cache_implementation), so it runs dense: ThinK runs only on a ThinKCache and this "
            f"cache holds the full keys; to get ThinK, {_DENSE_HINT}",
        )
    return None


def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
    """``generate``'s cache factory, patched per model: a ThinKCache unless told otherwise.

    The signature of transformers' method (and the name of the cache argument) changed across
    versions: the rest of the arguments are passed through untouched, and read by name.
    """
    original = type(self)._prepare_cache_for_generation
    params = inspect.signature(original).bind(
        self, generation_config, model_kwargs, *args, **kwargs
    ).arguments
    key = cache_kwarg(self)
    if (
        model_kwargs.get(key) is None
        and generation_config.use_cache is not False
        and generation_config.cache_implementation in (None, "dynamic")
    ):
        model_kwargs[key] = ThinKCache(
            settings=getattr(self, _STATE)["settings"],
            max_cache_len=params.get("max_cache_length"), config=self.config,
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
        model: a loaded decoder-only ``...ForCausalLM`` whose attention goes through
            transformers' attention registry (checked: see ``SUPPORTED_MODEL_TYPES`` and
            docs/think.md); full-attention layers get ThinK, sliding-window layers keep
            transformers' dense window cache; a model with no full-attention layer is refused.
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
        state = {"previous": model.config._attn_implementation, "warned": set(),
                 "hook": model.register_forward_pre_hook(_forward_pre_hook, with_kwargs=True)}
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
    state["hook"].remove()
    if "_prepare_cache_for_generation" in vars(model):
        del model._prepare_cache_for_generation
    delattr(model, _STATE)
    return model


def think_settings(model) -> ThinKSettings | None:
    """The settings :func:`apply_think` put on ``model``, or None if it is not patched."""
    state = getattr(model, _STATE, None)
    return None if state is None else state["settings"]
