"""ponder.toy.tokenizer: the character tokenizer, through transformers."""

from __future__ import annotations

import random
import sys

import pytest

pytest.importorskip("transformers")

import torch
from ponder.toy import (
    ALPHABET,
    SPECIAL_TOKENS,
    corrupt,
    make_problems,
    make_retrieval,
    make_tokenizer,
)
from transformers import AutoTokenizer, PreTrainedTokenizerFast


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return make_tokenizer()


def _texts() -> list[str]:
    problems = make_problems(1000, seed=0) + make_problems(
        500, seed=1, min_steps=2, max_steps=6, digits=3, ops="+-*"
    )
    rng = random.Random(0)
    return (
        [p.text for p in problems]
        + [p.prompt + corrupt(p, rng) for p in problems[::10]]
        + [e.text for e in make_retrieval(3, context_tokens=(1024, 8192), seed=0)]
    )


def test_vocabulary(tok):
    assert len(tok) == len(SPECIAL_TOKENS) + len(ALPHABET) == 31
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.convert_ids_to_tokens(list(range(4, len(tok)))) == list(ALPHABET)


def test_round_trip_of_every_generated_text(tok):
    texts = _texts()
    ids = tok(texts)["input_ids"]
    for text, row in zip(texts, ids):
        assert row[0] == tok.bos_token_id and len(row) == len(text) + 1  # one token a character
        assert tok.unk_token_id not in row
        assert tok.decode(row, skip_special_tokens=True) == text
        assert tok.decode(row) == "<bos>" + text
    assert tok("12+3\n\n", add_special_tokens=False)["input_ids"] == [
        tok.convert_tokens_to_ids(c) for c in "12+3\n\n"
    ]


def test_characters_outside_the_alphabet_are_unknown(tok):
    one, two = tok.convert_tokens_to_ids(["1", "2"])
    assert tok("1/2", add_special_tokens=False)["input_ids"] == [one, tok.unk_token_id, two]


def test_save_and_load_round_trip(tok, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a local folder never needs the hub
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    texts = _texts()[::50]
    for loaded in (AutoTokenizer.from_pretrained(tmp_path),
                   PreTrainedTokenizerFast.from_pretrained(tmp_path)):
        assert loaded.get_vocab() == tok.get_vocab()
        assert loaded.special_tokens_map == tok.special_tokens_map
        assert loaded.padding_side == "right"
        assert loaded(texts)["input_ids"] == tok(texts)["input_ids"]
        ids = tok(texts)["input_ids"]
        assert [loaded.decode(row, skip_special_tokens=True) for row in ids] == texts
    left = make_tokenizer(padding_side="left")
    left.save_pretrained(tmp_path / "left")
    assert AutoTokenizer.from_pretrained(tmp_path / "left").padding_side == "left"


def _check_padding(batch, lengths, side, pad_id):
    width = max(lengths)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (len(lengths), width)
    for ids, mask, n in zip(batch["input_ids"], batch["attention_mask"], lengths):
        real = torch.arange(width) >= width - n if side == "left" else torch.arange(width) < n
        assert torch.equal(mask, real.long())
        assert torch.all(ids[~real] == pad_id)
        assert ids[real][0] == 1  # <bos> starts the real tokens


@pytest.mark.parametrize("side", ["left", "right"])
def test_batches_pad_on_the_asked_side(side):
    prompts = [p.prompt for p in make_problems(7, seed=3, max_steps=5)]
    lengths = [len(p) + 1 for p in prompts]
    assert len(set(lengths)) > 1
    tok = make_tokenizer(padding_side=side)
    _check_padding(tok(prompts, padding=True, return_tensors="pt"), lengths, side, 0)
    # The per-call argument overrides the tokenizer's side.
    other = "right" if side == "left" else "left"
    batch = tok(prompts, padding=True, padding_side=other, return_tensors="pt")
    _check_padding(batch, lengths, other, 0)


def test_make_tokenizer_says_what_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(ImportError, match="pip install"):
        make_tokenizer()
    with pytest.raises(ValueError, match="padding_side"):
        make_tokenizer(padding_side="middle")
