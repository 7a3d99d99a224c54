"""The English a CLI prompt is drawn as: translated exactly as the service does.

`text2img generate` reads the same settings as `text2img serve` (TEXT2IMG_TRANSLATION,
TEXT2IMG_TRANSLATE_PROJECT, TEXT2IMG_TRANSLATE_ENDPOINT, ... from the environment or
`.env`) and uses the same translator, so a Japanese prompt is either translated like the
API's `translate: "auto"` or refused with the API's own message; it is never drawn as
garbage from untranslated text. English prompts never touch translation at all.
"""

from __future__ import annotations

import logging
import sys

from text2img.errors import UserError
from text2img.translate import TranslationError, TranslationRefused, is_latin_text


def english_prompt(prompt: str) -> str:
    """`prompt` itself when it is Latin-script text, else its translation (printed)."""
    if is_latin_text(prompt):
        return prompt
    from pydantic import ValidationError

    from text2img.settings import Settings
    from text2img.translate import make_translator

    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "TEXT2IMG_" + "_".join(str(p) for p in first["loc"]).upper()
        raise UserError(f"{name}: {first['msg']}") from None
    # the refusal below carries the setup advice; the translator's start-up warning
    # (written for the service's log) would print the same advice a second time
    quiet = logging.getLogger("text2img.translate")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        translator = make_translator(settings)
    finally:
        quiet.setLevel(level)
    try:
        result = translator.translate(prompt, "auto")
    except (TranslationRefused, TranslationError) as exc:
        raise UserError(str(exc)) from None
    print(f"translated to English: {result.text}", file=sys.stderr)
    return result.text
