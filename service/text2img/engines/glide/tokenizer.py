"""Tokenizers: GPT-2 byte-level BPE as GLIDE uses it, and a byte tokenizer for the tiny model.

GLIDE's rules (reference spec §7): the prompt is lower-cased with full Unicode lower-casing
(Python's `str.lower`, which handles final sigma and "İ"), split with the GPT-2
pre-tokenisation pattern, each piece's UTF-8 bytes mapped through GPT-2's byte-to-character
table and merged by BPE rank. No start/end token; "<|endoftext|>" is ordinary text. Padding
keeps the first `text_ctx` ids and appends the end token (n_vocab - 1) with mask false.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import regex

# GPT-2's pre-tokenisation pattern; \p{L} / \p{N} are Unicode letter / number categories.
_PIECE = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)


class Tokenizer(Protocol):
    """What the models need from a tokenizer."""

    @property
    def n_vocab(self) -> int: ...

    @property
    def end_token(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


def padded_tokens_and_mask(
    tokens: list[int], text_ctx: int, end_token: int
) -> tuple[list[int], list[bool]]:
    """Keep the first `text_ctx` ids, pad with `end_token` on the right; mask marks real ids."""
    kept = tokens[:text_ctx]
    padding = text_ctx - len(kept)
    return kept + [end_token] * padding, [True] * len(kept) + [False] * padding


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class BPETokenizer:
    """GPT-2 byte-level BPE (Radford et al. 2019) with GLIDE's lower-casing."""

    def __init__(self, encoder: dict[str, int], merges: list[tuple[str, str]]) -> None:
        self.encoder = encoder
        self.decoder = {v: k for k, v in encoder.items()}
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self._cache: dict[str, list[str]] = {}

    @classmethod
    def from_files(cls, encoder_json_gz: Path, vocab_bpe_gz: Path) -> BPETokenizer:
        """Load upstream's gzip'd `encoder.json` and `vocab.bpe` (first line is a comment)."""
        with gzip.open(encoder_json_gz, "rt", encoding="utf-8") as f:
            encoder = json.load(f)
        with gzip.open(vocab_bpe_gz, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges: list[tuple[str, str]] = []
        for line in lines[1:]:
            if not line:
                continue
            first, second = line.split(" ")
            merges.append((first, second))
        return cls(encoder, merges)

    @property
    def n_vocab(self) -> int:
        return len(self.encoder)

    @property
    def end_token(self) -> int:
        return self.n_vocab - 1

    def _bpe(self, piece: str) -> list[str]:
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        word = list(piece)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, len(self.ranks)))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        if len(self._cache) < 10_000:
            self._cache[piece] = word
        return word

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in _PIECE.findall(text.lower()):
            chars = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[token] for token in self._bpe(chars))
        return ids

    def decode(self, ids: list[int]) -> str:
        chars = "".join(self.decoder[i] for i in ids)
        return bytes(self.byte_decoder[c] for c in chars).decode("utf-8", errors="replace")


class ByteTokenizer:
    """UTF-8 bytes of the lower-cased prompt as ids 0..255; id 256 pads (tiny model only)."""

    @property
    def n_vocab(self) -> int:
        return 257

    @property
    def end_token(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        return list(text.lower().encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
