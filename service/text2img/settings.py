"""Service settings from the environment (`TEXT2IMG_` prefix) or a `.env` file.

One `Settings` model, read once by `get_settings()`; tests build their own instance.
The table of variables is in DEVELOPERS.md and docs/local.md.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from text2img.engines import registry


class Settings(BaseSettings):
    """Everything the service reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="TEXT2IMG_", env_file=".env", extra="ignore", validate_default=True
    )

    # auth: the value wins over the file (text2img.auth.load_token)
    api_token: str | None = Field(default=None, repr=False)
    api_token_file: Path | None = None

    # engine
    model: str = "glide"
    """A registry name (text2img.engines.registry.names())."""
    model_cache: Path | None = None
    device: Literal["cuda", "cpu"] | None = None
    # None = the device's default (CUDA float16, CPU float32); bfloat16 is a CPU option
    dtype: Literal["float32", "float16", "bfloat16"] | None = None

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in registry.names():
            raise ValueError(f"unknown model {value!r}; use one of {', '.join(registry.names())}")
        return value

    # translation (Cloud Translation v3)
    translation: Literal["on", "off"] = "on"
    translate_project: str = ""
    translate_endpoint: str = ""
    translate_timeout_s: float = Field(default=10.0, gt=0, le=120)
    translate_cache_size: int = Field(default=1024, ge=0, le=1_000_000)

    # scheduling
    queue_limit: int = Field(default=16, ge=1, le=10_000)
    """Jobs that may wait for the GPU; one more gets 429 + Retry-After."""
    request_timeout_s: float = Field(default=600.0, gt=0, le=86_400)
    """Per-request limit from submission (queue wait included) to the last image."""
    max_batch: int | None = Field(default=None, ge=1, le=64)
    """Cap on images per sampling batch; None = what the pipeline says its device handles."""
    batch_window_s: float = Field(default=0.03, ge=0, le=5)
    """How long a request that arrives alone waits for compatible ones to share its batch."""
    job_ttl_s: float = Field(default=600.0, gt=0, le=86_400)
    """How long finished jobs of the job API stay fetchable."""
    max_finished_jobs: int = Field(default=32, ge=1, le=10_000)
    """Finished jobs kept (with their PNGs, up to ~2 MB each) before the oldest go."""
    job_api: bool = True
    """Serve /v1/jobs (submit, then follow up). Off where follow-ups may reach another
    instance (Cloud Run): those routes then answer 400 pointing to `stream: true`."""

    # auth throttling
    auth_max_failures: int = Field(default=10, ge=1, le=1000)
    auth_block_s: float = Field(default=60.0, gt=0, le=86_400)
    trust_forwarded: bool = False
    """Key the failed-token throttle on the last X-Forwarded-For entry (the one a proxy in
    front, e.g. the gateway, appends) instead of the socket peer. Only behind a proxy."""

    # slow or hostile clients, shutdown
    body_timeout_s: float = Field(default=30.0, gt=0, le=600)
    """A request body must arrive within this many seconds (else 408)."""
    header_timeout_s: float = Field(default=15.0, gt=0, le=600)
    """Request headers must arrive within this many seconds (else 408, connection closed)."""
    shutdown_grace_s: float = Field(default=80.0, ge=0, le=100)
    """On SIGTERM the running batch may finish within this many seconds; then it is
    cancelled. Keep it under the container's stop timeout (the VM's unit gives 120 s)."""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (environment read once)."""
    return Settings()
