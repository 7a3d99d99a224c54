"""The API token: random, stored once in Secret Manager; never in metadata or plain outputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp
import pulumi_random as random

from infra.config import Settings
from infra.naming import Names

TOKEN_LENGTH = 48


@dataclass(frozen=True)
class Token:
    password: random.RandomPassword
    secret: gcp.secretmanager.Secret
    version: gcp.secretmanager.SecretVersion

    @property
    def value(self) -> pulumi.Output[str]:
        return pulumi.Output.secret(self.password.result)


def create_token(settings: Settings, names: Names, deps: Sequence[pulumi.Resource]) -> Token:
    # letters and digits only: safe in headers, shells and URLs
    password = random.RandomPassword("api-token", length=TOKEN_LENGTH, special=False)
    secret = gcp.secretmanager.Secret(
        "api-token",
        project=settings.project,
        secret_id=names.resource("api-token"),
        replication=gcp.secretmanager.SecretReplicationArgs(
            auto=gcp.secretmanager.SecretReplicationAutoArgs()
        ),
        labels=names.labels,
        opts=pulumi.ResourceOptions(depends_on=list(deps)),
    )
    version = gcp.secretmanager.SecretVersion(
        "api-token",
        secret=secret.id,
        secret_data=password.result,
        opts=pulumi.ResourceOptions(additional_secret_outputs=["secret_data"]),
    )
    return Token(password, secret, version)


def grant_accessor(
    logical: str, token: Token, principal: pulumi.Input[str]
) -> gcp.secretmanager.SecretIamMember:
    """secretAccessor on this one secret only."""
    return gcp.secretmanager.SecretIamMember(
        logical,
        project=token.secret.project,
        secret_id=token.secret.secret_id,
        role="roles/secretmanager.secretAccessor",
        member=principal,
    )


def container_env(
    env: Mapping[str, pulumi.Input[str]], token: Token
) -> list[gcp.cloudrunv2.ServiceTemplateContainerEnvArgs]:
    """A Cloud Run container's environment: `env` as plain values, and the API token by
    reference to its pinned secret version (never its value: a new token version rolls
    out a new revision)."""
    return [
        *(gcp.cloudrunv2.ServiceTemplateContainerEnvArgs(name=k, value=v) for k, v in env.items()),
        gcp.cloudrunv2.ServiceTemplateContainerEnvArgs(
            name="TEXT2IMG_API_TOKEN",
            value_source=gcp.cloudrunv2.ServiceTemplateContainerEnvValueSourceArgs(
                secret_key_ref=gcp.cloudrunv2.ServiceTemplateContainerEnvValueSourceSecretKeyRefArgs(
                    secret=token.secret.secret_id,
                    version=token.version.version,
                )
            ),
        ),
    ]
