"""GET /v1/models: what OpenAI clients list before they call the images API."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from text2img.api.deps import Authorized, State

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Authorized])


@router.get("/models")
async def list_models(state: State) -> dict[str, Any]:
    """The one model this service draws with (`tiny` = random weights, noise)."""
    name = state.model_name or state.settings.model
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": int(state.activity.started_at),
                "owned_by": "text2img",
                "ready": state.ready,
                "random_weights": name == "tiny",
            }
        ],
    }
