"""GET /v1/models: what OpenAI clients list before they call the images API."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from text2img.api.deps import State

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models")
async def list_models(state: State) -> dict[str, Any]:
    """The one model this service draws with: its sizes, options with defaults and limits,
    licence, whether its weights are random (images are noise), and whether non-Latin
    prompts can be translated here (`translation`: known at start, so a page can say so)."""
    spec = state.spec
    return {
        "object": "list",
        "data": [
            {
                "id": spec.name,
                "object": "model",
                "created": int(state.activity.started_at),
                "owned_by": "text2img",
                "ready": state.ready,
                **spec.public(),
                "translation": {
                    "available": state.translator.available,
                    "message": state.translator.message,
                },
            }
        ],
    }
