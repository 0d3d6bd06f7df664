"""A character-level tokenizer for the toy world that transformers understands.

One token per character of :data:`ALPHABET` (digits, ``+ - * = ? :``, space, newline and the
letters of ``"Q:"``, ``"Answer:"``, ``"k..."`` and ``"v..."``), after four special tokens::

    id 0 <pad>   1 <bos>   2 <eos>   3 <unk>   4.. ALPHABET in order

Encoding prepends ``<bos>`` (as Llama's tokenizers do; ``add_special_tokens=False`` leaves it
out) and never appends ``<eos>``: training code appends ``eos_token_id`` to targets, and
generation stops on it. A character outside the alphabet encodes as ``<unk>``. Decoding
concatenates the characters, so ``decode(encode(text), skip_special_tokens=True) == text`` for any
text over the alphabet.

transformers and tokenizers are imported only when :func:`make_tokenizer` runs, so ``import
ponder`` and ``import ponder.toy`` never need them.
"""

from __future__ import annotations

__all__ = ["ALPHABET", "SPECIAL_TOKENS", "make_tokenizer"]

# Order matters: the ids are fixed by it and are part of the trained toy models.
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
ALPHABET = "\n 0123456789+-*=?:AQeknrsvw"


def make_tokenizer(*, padding_side: str = "right", model_max_length: int = 16384):
    """The toy world's character tokenizer, as a ``transformers.PreTrainedTokenizerFast``.

    Parameters
    ----------
    padding_side : {"right", "left"}
        Where batches are padded (with ``<pad>``, id 0); use "left" for batched generation.
        ``tokenizer(texts, padding=True, padding_side=...)`` also overrides it per call.
    model_max_length : int
        The length transformers warns above (in tokens, ``<bos>`` included).

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        Save it with ``save_pretrained(folder)`` and load it back with
        ``transformers.AutoTokenizer.from_pretrained(folder)`` (or
        ``PreTrainedTokenizerFast.from_pretrained``): the folder holds ``tokenizer.json``, so
        no ponder code is needed to load it.

    Raises
    ------
    ImportError
        If transformers (and tokenizers, which it installs) is missing.
    """
    if padding_side not in ("right", "left"):
        raise ValueError(
            f"make_tokenizer: padding_side must be 'right' or 'left', got {padding_side!r}"
        )
    try:
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
        from transformers import PreTrainedTokenizerFast
    except ImportError as err:
        raise ImportError(
            "ponder.toy.make_tokenizer needs transformers (with tokenizers): "
            "pip install 'ponder[hf]' (or pip install 'transformers>=4.50')"
        ) from err

    pad, bos, eos, unk = SPECIAL_TOKENS
    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *ALPHABET))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    # Every character is its own "word" ("[\s\S]" so that newlines are characters too); no
    # normaliser, so spaces and newlines are kept as they are.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()  # join the characters with nothing between them
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        pad_token=pad,
        padding_side=padding_side,
        model_max_length=model_max_length,
        # transformers' default clean-up would rewrite " ?" as "?" and so on: never for us.
        clean_up_tokenization_spaces=False,
    )
