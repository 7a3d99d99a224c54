"""GLIDE reports the prompt its text encoder actually read (issue 21.4), and the shared
prefix rule both engines use."""

from __future__ import annotations

import pytest

from text2img.engines.base import ImageRequest
from text2img.engines.prompt_cut import kept_prefix
from text2img.engines.registry import get_spec, load_engine


def test_kept_prefix_cuts_at_the_limit_and_back_to_a_word() -> None:
    def count(text: str) -> int:
        return len(text)  # one token per character

    assert kept_prefix("a red fox", count, 9) is None  # fits exactly: nothing cut
    assert kept_prefix("a red fox", count, 8) == "a red"  # "fo" would be half a word
    assert kept_prefix("a red fox jumps", count, 9) == "a red fox"  # cut at a space
    assert kept_prefix("赤い狐が跳ぶ", count, 4) == "赤い狐が"  # no spaces: by character
    assert kept_prefix("x", count, 0) == ""


@pytest.fixture(scope="module")
def tiny():
    return load_engine("tiny", device="cpu")


def test_a_prompt_longer_than_the_text_context_reports_what_was_drawn(tiny) -> None:
    limit = min(tiny.pipeline.base.cfg.text_ctx, tiny.pipeline.upsampler.cfg.text_ctx)
    words = " ".join(f"w{i}" for i in range(limit))  # longer than `limit` byte tokens
    settings = get_spec("tiny").settings(size="64x64", steps=2)
    cut, whole = tiny.generate([ImageRequest(words, 1), ImageRequest("a fox", 2)], settings)
    assert whole.prompt_used is None
    assert cut.prompt_used is not None
    assert words.startswith(cut.prompt_used)
    assert len(tiny.pipeline.tokenizer.encode(cut.prompt_used)) <= limit
    next_word = words[len(cut.prompt_used) :].split()[0]
    longer = f"{cut.prompt_used} {next_word}"
    assert len(tiny.pipeline.tokenizer.encode(longer)) > limit  # the most that fitted
