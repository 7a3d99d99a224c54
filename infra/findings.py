"""What a preflight check reports: one line for the user, and whether it stops a deploy."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    """One line for the user; `fatal` ones stop `pulumi up`."""

    text: str
    fatal: bool = True


def console(path: str, project: str) -> str:
    """The Cloud Console page `path` for `project`, for a finding to link to."""
    return f"https://console.cloud.google.com/{path}?project={project}"
