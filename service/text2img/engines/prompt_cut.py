"""What a text encoder with a token limit actually reads of a prompt (issue 21.4).

Torch-free. Engines call `kept_prefix` per prompt and return the result as
`GeneratedImage.prompt_used` (None: the whole prompt was drawn).
"""

from __future__ import annotations

from collections.abc import Callable


def kept_prefix(prompt: str, count: Callable[[str], int], limit: int) -> str | None:
    """The longest prefix of `prompt` whose token count (`count`) is within `limit`, cut
    back to a word boundary where the cut falls inside a word (so every word shown was
    drawn whole); None when the whole prompt fits. Tokenizers that split at words make
    the tokens of a prefix a prefix of the prompt's tokens, so this is what was read."""
    if count(prompt) <= limit:
        return None
    lo, hi = 0, len(prompt)  # count(prompt[:lo]) fits, count(prompt[:hi]) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(prompt[:mid]) <= limit else (lo, mid)
    kept = prompt[:lo]
    if not prompt[lo].isspace() and any(c.isspace() for c in kept):
        kept = kept[: max(i for i, c in enumerate(kept) if c.isspace())]
    return kept.rstrip()
