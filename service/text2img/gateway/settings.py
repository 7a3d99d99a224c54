"""Gateway settings from the environment (see DEVELOPERS.md, "Gateway settings")."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    """Everything the gateway reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="TEXT2IMG_GATEWAY_", extra="ignore")

    api_token: str | None = Field(
        default=None, validation_alias=AliasChoices("TEXT2IMG_API_TOKEN", "api_token")
    )
    api_token_file: str | None = Field(
        default=None, validation_alias=AliasChoices("TEXT2IMG_API_TOKEN_FILE", "api_token_file")
    )
    # which GPU backend the gateway drives (text2img.gateway.backend): `vm` (one GCE VM)
    # or `cloudrun` (a private Cloud Run GPU service at `upstream_url`)
    backend: Literal["vm", "cloudrun"] = "vm"
    project: str = ""
    zone: str = ""
    instance: str = ""
    upstream_port: int = Field(default=8080, ge=1, le=65535)
    upstream_url: str | None = None
    compute_endpoint: str | None = None
    # seconds a successful /readyz is trusted before asking again
    ready_cache_s: float = Field(default=15.0, ge=0)
    # seconds an observed VM state is reused by concurrent requests
    state_cache_s: float = Field(default=2.0, ge=0)
    # no second instances.start within this many seconds of the first
    start_cooldown_s: float = Field(default=30.0, ge=0)
    # a failed start is reported (not retried) for this long
    failure_hold_s: float = Field(default=60.0, ge=0)
    # typical seconds from instances.start to the service answering ready (learned later)
    typical_wake_s: float = Field(default=120.0, gt=0)
    connect_timeout_s: float = Field(default=3.0, gt=0)
    read_timeout_s: float = Field(default=300.0, gt=0)
    probe_timeout_s: float = Field(default=3.0, gt=0)
    # key the failed-token throttle on the LAST X-Forwarded-For entry, the one Cloud Run's
    # front end appends (earlier entries are whatever the client sent)
    trust_forwarded_for: bool = True
    # failed token attempts per client per minute before throttling
    max_auth_failures: int = Field(default=10, ge=1)
    # request headers / bodies must arrive within these many seconds (else 408)
    header_timeout_s: float = Field(default=15.0, gt=0, le=600)
    body_timeout_s: float = Field(default=30.0, gt=0, le=600)
    # until this instance has reached the VM once, connect failures are retried this long
    # (Direct VPC egress can take a minute to work on a new Cloud Run instance)
    egress_warmup_s: float = Field(default=8.0, ge=0, le=60)
