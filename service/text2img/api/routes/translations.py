"""POST /v1/translations: the English a prompt would be drawn as."""

from __future__ import annotations

from fastapi import APIRouter

from text2img.api.deps import State
from text2img.api.generation import translate
from text2img.api.schemas import ERROR_RESPONSES, TranslationRequest, TranslationResponse
from text2img.translate import needs_translation

router = APIRouter(prefix="/v1", tags=["translations"], responses=ERROR_RESPONSES)


@router.post("/translations", response_model=TranslationResponse)
async def create_translation(body: TranslationRequest, state: State) -> TranslationResponse:
    """Translate `text` to English (Cloud Translation v3; cached). Text that needs no
    translation (Latin script only) comes back unchanged where translation is unavailable."""
    result = await translate(state, body.text, body.mode, "text")
    return TranslationResponse(
        text=result.text,
        detected_language=result.detected_language,
        translated=result.translated,
        needs_translation=needs_translation(body.text),
    )
