"""Every tokenizer case of the reference folder: lower-casing, ids, padding, decoding."""

from __future__ import annotations

import pytest
from glide_reference import read_json, reference_dir, require_dir

from text2img.engines.glide.tokenizer import BPETokenizer, padded_tokens_and_mask


def _cases() -> list[dict]:
    return read_json("tokenizer_cases.json")["cases"] if reference_dir() else []


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    folder = require_dir()
    return BPETokenizer.from_files(
        folder / "tokenizer" / "encoder.json.gz", folder / "tokenizer" / "vocab.bpe.gz"
    )


def test_vocabulary_matches(tokenizer):
    data = read_json("tokenizer_cases.json")
    assert tokenizer.n_vocab == data["n_vocab"]
    assert tokenizer.end_token == data["end_token"]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: repr(c["prompt"][:24]))
def test_tokenizer_case(tokenizer, case):
    ctx = read_json("tokenizer_cases.json")["text_ctx"]
    assert case["prompt"].lower() == case["prompt_lowercased"]
    ids = tokenizer.encode(case["prompt"])
    assert ids == case["ids"]
    assert len(ids) == case["num_ids"]
    tokens, mask = padded_tokens_and_mask(ids, ctx, tokenizer.end_token)
    assert tokens == case[f"padded_tokens_{ctx}"]
    assert mask == case[f"mask_{ctx}"]
    assert tokenizer.decode(ids) == case["decoded"]
