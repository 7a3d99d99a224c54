"""Which requests may wake the GPU VM.

Only the documented calls that do work wake it (README, *The API and the web UI*): a
poller that adds a trailing slash, doubles a slash or sends OPTIONS must never keep the
GPU running. Paths are normalised first, the decision is made on the normalised path,
and the same normalised path is what the service receives, so both agree on what was
asked. Paths are case-sensitive, as in the service: `/V1/STATUS` is not `/v1/status`.
"""

from __future__ import annotations

import re

_JOB = re.compile(r"^/v1/jobs/[A-Za-z0-9_-]{1,64}(/events)?$")

# (method, path) pairs that wake a sleeping VM. GET /v1/status is the web page asking
# when it opens, so the VM boots while the user types.
WAKE_EXACT = frozenset(
    {
        ("POST", "/v1/images/generations"),
        ("POST", "/v1/translations"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/status"),
    }
)
WAKE_JOB_METHODS = frozenset({"GET", "DELETE"})


def normalise(path: str) -> str:
    """Collapse repeated slashes and drop a trailing one ("//v1/ready/" -> "/v1/ready")."""
    collapsed = re.sub(r"/{2,}", "/", path or "/")
    if len(collapsed) > 1:
        collapsed = collapsed.rstrip("/") or "/"
    return collapsed if collapsed.startswith("/") else "/" + collapsed


def may_wake(method: str, path: str) -> bool:
    """True for the documented calls that do work; `path` must be normalised."""
    if (method, path) in WAKE_EXACT:
        return True
    if method == "DELETE" and path.endswith("/events"):
        return False
    return method in WAKE_JOB_METHODS and bool(_JOB.match(path))
