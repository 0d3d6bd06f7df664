"""The constructed toy retrieval model: a two-layer Llama that answers the lookups of
:mod:`ponder.toy.retrieval` at every length tried (up to 8K tokens), the long-context workload
ThinK is shown on.

Its weights are written down, as an explicit n-gram lookup circuit, when
:func:`build_retrieval_model` runs (milliseconds, nothing shipped). Its answer depends on one
precise attention pattern over the whole context, which is what a KV-cache compression method
must preserve. The shipped, *trained* retrieval model (``load_toy_model("retrieval")``,
:mod:`ponder.toy.retrieval_train`) starts from this one's layer 0 and learns the rest; see
docs/toy.md for why.

The circuit, for ``key_digits = n`` (one character = one token)::

    context   ... k 7 3 1 0 = v 5 \\n ...        query   ... Q :   k 7 3 1 0 =  -> "v", "5"

- Layer 0: eight *offset heads*. Head ``j`` (``j = 1..8``) attends to exactly ``j`` tokens back
  at every position (through its query and key biases and the rotary phases, independent of
  content) and copies that token, one-hot, into residual slot ``j``. After layer 0 every position
  holds the last nine tokens, in order.
- Layer 1, head 0: the lookup. At the query's final ``v`` the key digits sit at offsets
  ``2..n+1``; at a value digit in the context the same key sits at offsets ``3..n+2``. The head's
  query reads the digits of slots ``2..n+1``, its key the digits of slots ``3..n+2``, both into
  the same one-hot features, so the score counts the matching key digits, plus one for the
  ``"="`` in front of the value (times ``match_scale``). The features live in the rotary dimensions that turn by less than 0.05 rad
  over 8K tokens, so the match does not depend on distance. Its value copies the attended token,
  and the unembedding reads it out: the answer is the digit after the best-matching key.

The unembedding also writes ``"v"`` after ``"="``, so the prompt (which ends with the query's
``"="``) is completed as ``"v5"`` and the digit is read in a decode step, from the KV cache. All
other weights are zero. Scores: ``n * match_scale`` for the right key, at most
``(n - 1) * match_scale`` for any other position, so with the default scale a wrong answer needs
about ``e**12`` near-miss keys.

    from ponder.toy import make_retrieval
    from ponder.toy.retrieval_model import build_retrieval_model, evaluate_retrieval
    model, tok = build_retrieval_model()
    evaluate_retrieval(model, tok, make_retrieval(20, context_tokens=4096, seed=1))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .models import generate_solutions
from .retrieval import RetrievalExample, make_retrieval, verify_retrieval
from .tokenizer import ALPHABET, SPECIAL_TOKENS, make_tokenizer

__all__ = [
    "MAX_KEY_DIGITS",
    "build_retrieval_model",
    "evaluate_retrieval",
    "format_retrieval_accuracy",
    "retrieval_accuracy",
    "static_rotary_pairs",
]

_HEADS = 8          # layer 0: offset heads 1..8
_HEAD_DIM = 128
_SLOT = 16          # tokens a slot holds: ids 4..19 ("\n", " ", digits, "+-*=")
_FIRST_SLOT_ID = len(SPECIAL_TOKENS)
_VOCAB = len(SPECIAL_TOKENS) + len(ALPHABET)
_HIDDEN = 192       # one-hot token (32) + 8 slots (128) + the retrieved digit (16) + spare
_RETRIEVED = 32 + _HEADS * _SLOT
_ROPE_THETA = 1e12
# Offset heads: one rotary pair per scale (periods 6, 35, 196, 1117 tokens), so no other offset
# up to 8K comes within ~20 nats of the intended one.
_OFFSET_PAIRS = (0, 4, 8, 12)
_OFFSET_WEIGHTS = (200.0, 400.0, 800.0, 1600.0)
MAX_KEY_DIGITS = 6  # slots 3..n+2 must exist (n + 2 <= 8), and 10 * n + 1 <= 72 static features


def static_rotary_pairs(model, *, horizon: int = 8192, max_angle: float = 0.05) -> torch.Tensor:
    """``[head_dim / 2]`` bools: the rotary pairs of ``model`` whose angle over ``horizon`` tokens
    stays below ``max_angle`` rad. Query/key features there (both halves of a pair: they rotate
    together, by almost nothing) score the same at any distance up to ``horizon``."""
    return model.model.rotary_emb.inv_freq.double() * horizon < max_angle


def _digit_ids() -> list[int]:
    return [len(SPECIAL_TOKENS) + ALPHABET.index(str(d)) for d in range(10)]


def build_retrieval_model(key_digits: int = 4, *, match_scale: float = 12.0,
                          max_position_embeddings: int = 16384):
    """The toy retrieval model and its tokenizer (see the module docstring for the circuit).

    Parameters
    ----------
    key_digits : int
        The key width it looks up (:func:`ponder.toy.make_retrieval`'s ``key_digits``), 1 to
        :data:`MAX_KEY_DIGITS`. It answers one value digit (``value_digits=1``).
    match_scale : float
        Attention logit per matching key digit (nats). 12 keeps a wrong answer unlikely with
        up to thousands of near-miss keys.
    max_position_embeddings : int
        The longest prompt transformers should expect (tokens).

    Returns
    -------
    (transformers.LlamaForCausalLM, transformers.PreTrainedTokenizerFast)
        A 2-layer Llama (hidden 192, 8 heads of dim 128, fp32, eval mode; 1.67M
        parameters) and the toy tokenizer padding on the left.
    """
    if isinstance(key_digits, bool) or not isinstance(key_digits, int):
        raise TypeError(f"build_retrieval_model: key_digits must be an int, got {key_digits!r}")
    if not 1 <= key_digits <= MAX_KEY_DIGITS:
        raise ValueError(
            f"build_retrieval_model: key_digits must be in [1, {MAX_KEY_DIGITS}], got {key_digits}"
        )
    if not match_scale > 0:
        raise ValueError(f"build_retrieval_model: match_scale must be > 0, got {match_scale}")
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=_VOCAB, hidden_size=_HIDDEN, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=_HEADS, num_key_value_heads=_HEADS, head_dim=_HEAD_DIM,
        attention_bias=True, rope_theta=_ROPE_THETA, max_position_embeddings=max_position_embeddings,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for m in model.modules():  # RMSNorm weights back to one
            if type(m).__name__.endswith("RMSNorm"):
                m.weight.fill_(1.0)
        _write_circuit(model, key_digits, match_scale)
    model.eval()
    return model, make_tokenizer(padding_side="left")


def _write_circuit(model, key_digits: int, match_scale: float) -> None:
    hd, half = _HEAD_DIM, _HEAD_DIM // 2
    inv_freq = model.model.rotary_emb.inv_freq.double()
    first_static = int(static_rotary_pairs(model).nonzero()[0])  # pair 28 of 64 with base 1e12
    # An RMSNorm maps a sum of k unit one-hots to entries of sqrt(hidden / k).
    emb = model.model.embed_tokens.weight
    emb[:, :_VOCAB] = torch.eye(_VOCAB)

    # Layer 0: offset heads. With constant q = (a_i, 0) and k = (a_i cos(j w_i), a_i sin(j w_i))
    # per rotary pair i, the score between positions p and s is sum_i a_i^2 cos((p - s - j) w_i):
    # largest at p - s = j.
    attn0 = model.model.layers[0].self_attn
    norm_in = math.sqrt(_HIDDEN / 1)  # one one-hot entering layer 0
    for h in range(_HEADS):
        j = h + 1
        for pair, weight in zip(_OFFSET_PAIRS, _OFFSET_WEIGHTS):
            a, angle = math.sqrt(weight), j * inv_freq[pair].item()
            attn0.q_proj.bias[h * hd + pair] = a
            attn0.k_proj.bias[h * hd + pair] = a * math.cos(angle)
            attn0.k_proj.bias[h * hd + half + pair] = a * math.sin(angle)
        for t in range(_SLOT):
            attn0.v_proj.weight[h * hd + t, _FIRST_SLOT_ID + t] = 1.0 / norm_in
            attn0.o_proj.weight[32 + _SLOT * h + t, h * hd + t] = 1.0

    # Layer 1, head 0: the lookup. Nine one-hots (token + 8 slots) enter it.
    attn1 = model.model.layers[1].self_attn
    norm_mid = math.sqrt(_HIDDEN / (1 + _HEADS))
    digits = _digit_ids()
    # score = q.k / sqrt(hd) = w^2 * norm_mid^2 * matches / sqrt(hd) = match_scale * matches
    w = math.sqrt(match_scale * math.sqrt(hd)) / norm_mid
    for i in range(key_digits):
        q_slot, k_slot = 2 + i, 3 + i  # offsets of the same key digit at the query / the value
        for d, tid in enumerate(digits):
            f = 10 * i + d
            dim = first_static + f // 2 + (half if f % 2 else 0)
            t = tid - _FIRST_SLOT_ID
            attn1.q_proj.weight[dim, 32 + _SLOT * (q_slot - 1) + t] = w
            attn1.k_proj.weight[dim, 32 + _SLOT * (k_slot - 1) + t] = w
    # One more feature: the "=" just before (query side: slot 1; value side: slot 2), so that a
    # value digit that happens to sit 3 tokens before another (1-digit keys: "v6\nk2") scores
    # less than the true pair.
    f = 10 * key_digits
    dim = first_static + f // 2 + (half if f % 2 else 0)
    eq = len(SPECIAL_TOKENS) + ALPHABET.index("=") - _FIRST_SLOT_ID
    attn1.q_proj.weight[dim, 32 + _SLOT * 0 + eq] = w
    attn1.k_proj.weight[dim, 32 + _SLOT * 1 + eq] = w
    for d, tid in enumerate(digits):  # copy the attended token's digit into the retrieved slot
        attn1.v_proj.weight[d, tid] = 1.0 / norm_mid
        attn1.o_proj.weight[_RETRIEVED + d, d] = 1.0

    # Unembedding: the retrieved digit, as a logit of `readout` nats over every other token; and
    # after "=" a "v" (twice as strong, so it wins over whatever the lookup head copied there),
    # which is how a query "Q: k7310=" is completed to "v3" as its pair in the context was.
    readout = 30.0
    norm_out = math.sqrt(_HIDDEN / (2 + _HEADS))
    for d, tid in enumerate(digits):
        model.lm_head.weight[tid, _RETRIEVED + d] = readout / norm_out
    eq_id, v_id = (len(SPECIAL_TOKENS) + ALPHABET.index(c) for c in "=v")
    model.lm_head.weight[v_id, eq_id] = 2 * readout / norm_out


def evaluate_retrieval(model, tokenizer, examples: Sequence[RetrievalExample], *,
                       batch_size: int = 8) -> dict:
    """Greedy accuracy of ``model`` on ``examples`` (``len(answer)`` new tokens: ``"v"`` and the
    digits; the digits come from decode steps, so they read the KV cache).

    Returns ``{"accuracy": float, "correct": [bool, ...]}``, in the order of ``examples``.
    """
    if not examples:
        raise ValueError("evaluate_retrieval: examples is empty")
    texts = generate_solutions(model, tokenizer, [e.prompt for e in examples],
                               batch_size=batch_size,
                               max_new_tokens=max(len(e.answer) for e in examples))
    correct = [verify_retrieval(e, t) for e, t in zip(examples, texts)]
    return {"accuracy": sum(correct) / len(correct), "correct": correct}


def retrieval_accuracy(model, tokenizer, *, lengths: Sequence[int] = (1024, 4096, 8192),
                       n: int = 24) -> dict[str, float]:
    """``{str(length): accuracy}`` on ``n`` held-out lookups of each context length (tokens).

    The lookups of a length are always the same (seed ``10_000 + length``): what the recipe of
    the trained model records and ``ponder toy eval --models retrieval`` re-measures.
    """
    return {str(length): evaluate_retrieval(
                model, tokenizer, make_retrieval(n, context_tokens=length, seed=10_000 + length)
            )["accuracy"] for length in lengths}


def format_retrieval_accuracy(accuracy: dict[str, float], n: int) -> str:
    """One line: ``accuracy`` (from :func:`retrieval_accuracy`) by context length."""
    cells = ", ".join(f"{int(k):,} tokens {v:.1%}" for k, v in accuracy.items())
    return f"retrieval lookup accuracy ({n} lookups each, chance 10%): {cells}"
