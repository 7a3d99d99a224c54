"""Request and response bodies; every field bounded.

The generation body is OpenAI's fields plus the served engine's options: `request_model`
builds it from the engine's spec (types here, ranges and choices enforced by the spec),
so a new engine's options reach the API and its OpenAPI schema without an edit here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    create_model,
    field_validator,
)

from text2img.engines.base import EngineSpec, Option

MAX_PROMPT = 1000
# the largest seed a request may name; image i draws seed+i, wrapping to 0 past it
MAX_REQUEST_SEED = 2**32 - 1
MAX_TEXT_OPTION = 64
# Strict numbers: JSON true, "2" or 2.0 are not integers, "3" is not a number; NaN and
# infinity are refused by name. Ranges of engine options are the engine's (its spec).
Number = Annotated[StrictFloat, Field(allow_inf_nan=False)]  # strict float takes ints
_OPTION_TYPES: dict[type, Any] = {
    int: StrictInt,
    float: Number,
    str: Annotated[str, Field(max_length=MAX_TEXT_OPTION)],
}


class ImageGenerationRequest(BaseModel):
    """OpenAI Images API `images.generate`, plus this service's extensions.

    The served engine's options are added by `request_model`; any other field is kept
    (extra="allow") so that `generation.engine_settings` can name it in its 400.
    """

    model_config = ConfigDict(extra="allow")

    prompt: str = Field(
        min_length=1,
        max_length=MAX_PROMPT,
        description="What to draw, in English or Japanese (translated).",
    )
    n: StrictInt = Field(default=1, ge=1, le=8, description="Images to draw (1-8).")
    size: str | None = Field(
        default=None,
        max_length=32,
        description="WIDTHxHEIGHT: one of the served model's sizes (GET /v1/models), an "
        "alias such as auto, or omitted for its default; the response says the size drawn.",
    )
    response_format: Literal["b64_json", "url"] = Field(
        default="b64_json",
        description="Only b64_json is served; url is refused (this service keeps no images).",
    )
    model: str | None = Field(
        default=None,
        max_length=100,
        description="The served model's id (GET /v1/models) or omitted; another id is a 400.",
    )
    output_format: Literal["png", "jpeg", "webp"] = Field(
        default="png", description="Encoding of b64_json: png (lossless), jpeg or webp."
    )
    output_compression: StrictInt | None = Field(
        default=None,
        ge=0,
        le=100,
        description="Quality of jpeg/webp, 0-100 (default 100: best; webp lossless).",
    )
    stream: StrictBool = Field(
        default=False,
        description="true: answer with server-sent events as OpenAI's Images API streams "
        "them (image_generation.partial_image, image_generation.completed), plus "
        "text2img.progress events that SDKs pass over.",
    )
    partial_images: StrictInt | None = Field(
        default=None,
        ge=0,
        le=3,
        description="With stream: intermediate images per image before the final one (0-3).",
    )
    user: str | None = Field(default=None, max_length=256, description="Accepted, ignored.")
    quality: str | None = Field(default=None, max_length=32, description="Accepted, ignored.")
    style: str | None = Field(default=None, max_length=32, description="Accepted, ignored.")
    # extensions (and the engine's options, from its spec)
    seed: StrictInt | None = Field(
        default=None,
        ge=0,
        le=MAX_REQUEST_SEED,
        description="Image i uses seed+i; random when omitted.",
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

    def engine_options(self) -> dict[str, Any]:
        """The engine options this request sets (None = the engine's default), and any
        field no model here declares (the spec refuses those by name)."""
        common = ImageGenerationRequest.model_fields
        values = {k: getattr(self, k) for k in type(self).model_fields if k not in common}
        values.update(self.model_extra or {})
        return {k: v for k, v in values.items() if v is not None}


def _option_field(option: Option) -> tuple[Any, Any]:
    """(type, Field) of one engine option: its strict type, its limits shown in the schema."""
    shown = {k: v for k, v in option.public().items() if k in ("default", "minimum", "maximum")}
    if option.choices is not None:
        shown["enum"] = list(option.choices)
    return _OPTION_TYPES[option.kind] | None, Field(
        default=None,
        description=f"{option.description} (omitted: the model's default)",
        json_schema_extra=shown,
    )


_MODELS: dict[tuple[Option, ...], type[ImageGenerationRequest]] = {}


def request_model(spec: EngineSpec) -> type[ImageGenerationRequest]:
    """The generation body for an engine: the common fields plus its options."""
    key = tuple(spec.options)
    if key not in _MODELS:
        clash = [o.name for o in spec.options if o.name in ImageGenerationRequest.model_fields]
        if clash:
            raise ValueError(f"engine {spec.name}: options {clash} shadow request fields")
        fields = {o.name: _option_field(o) for o in spec.options}
        _MODELS[key] = create_model(  # type: ignore[call-overload]
            "ImageGenerationRequest",
            __base__=ImageGenerationRequest,
            __doc__=ImageGenerationRequest.__doc__,
            **fields,
        )
    return _MODELS[key]


class ImageData(BaseModel):
    b64_json: str = Field(description="The image in output_format, base64-encoded.")
    revised_prompt: str = Field(description="The English text actually drawn.")
    prompt_truncated: bool = Field(
        default=False,
        description="True when the model read only the start of the prompt (revised_prompt "
        "is that part).",
    )
    seed: int = Field(description="The seed of this image (reproduces it).")


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    model: str = Field(description="The model that drew the images (tiny = random weights).")
    size: str = Field(description="The size drawn, WIDTHxHEIGHT.")
    output_format: str = Field(description="The encoding of b64_json: png, jpeg or webp.")


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
    needs_translation: bool = Field(
        description="False when every letter is Latin script (English, accents, full-width; "
        "digits, symbols and emoji do not count): such text is drawn as written, and comes "
        "back unchanged even where this service cannot translate."
    )


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
