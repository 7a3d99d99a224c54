"""Request and response bodies; every field bounded."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_PROMPT = 1000
MAX_SEED = 2**32 - 1
Sampler = Literal["ancestral", "ddim", "dpm++2m"]


class ImageGenerationRequest(BaseModel):
    """OpenAI Images API `images.generate`, plus this service's extensions."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(
        min_length=1,
        max_length=MAX_PROMPT,
        description="What to draw, in English or Japanese (translated).",
    )
    n: int = Field(default=1, ge=1, le=8, description="Images to draw (1-8).")
    size: Literal["64x64", "256x256"] = Field(
        default="256x256", description="64x64 = base model only; 256x256 adds the upsampler."
    )
    response_format: Literal["b64_json", "url"] = Field(
        default="b64_json",
        description="Only b64_json is served; url is refused (this service keeps no images).",
    )
    model: str | None = Field(
        default=None,
        max_length=100,
        description="Accepted for compatibility; the loaded model draws.",
    )
    user: str | None = Field(default=None, max_length=256, description="Accepted, ignored.")
    quality: str | None = Field(default=None, max_length=32, description="Accepted, ignored.")
    style: str | None = Field(default=None, max_length=32, description="Accepted, ignored.")
    # extensions
    guidance_scale: float | None = Field(
        default=None, ge=0.0, le=20.0, description="Classifier-free guidance scale."
    )
    sampler: Sampler | None = Field(default=None, description="Sampler of the base model.")
    steps: int | None = Field(
        default=None, ge=1, le=250, description="Sampling steps of the base model."
    )
    upsample_steps: int | None = Field(
        default=None, ge=1, le=250, description="Sampling steps of the upsampler."
    )
    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, description="Image i uses seed+i; random when omitted."
    )
    translate: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="auto: translate only non-Latin text; always; never (English only).",
    )

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()


class ImageData(BaseModel):
    b64_json: str = Field(description="The PNG, base64-encoded.")
    revised_prompt: str = Field(description="The English text actually drawn.")
    seed: int = Field(description="The seed of this image (reproduces it).")


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    model: str = Field(description="The model that drew the images (tiny = random weights).")


class TranslationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=MAX_PROMPT)
    mode: Literal["auto", "always"] = Field(
        default="always",
        description="always: ask the Translation API; auto: only for non-Latin text.",
    )

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()


class TranslationResponse(BaseModel):
    text: str = Field(description="English.")
    detected_language: str | None = Field(description="Source language the API detected.")
    translated: bool = Field(description="False when the text was passed through unchanged.")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class JobProgressOut(BaseModel):
    stage: str
    step: int
    total: int
    fraction: float


class JobOut(BaseModel):
    id: str
    object: Literal["image.job"] = "image.job"
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    created: int
    n: int
    revised_prompt: str
    progress: JobProgressOut
    queue_position: int | None = None
    model: str
    error: ErrorDetail | None = None
    data: list[ImageData] | None = None


class StatusOut(BaseModel):
    ready: bool
    model: str
    idle_seconds: float
    jobs_in_flight: int
    queue_depth: int
    started_at: float
    last_activity_at: float | None


ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 424, 429, 503, 504)
}
