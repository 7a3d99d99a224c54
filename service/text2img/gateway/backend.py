"""The seam between the gateway's policy and the thing that runs the GPU work.

A backend answers two questions and takes one order, all synchronous (the policy runs
them in a worker thread and never lets one call hold other requests):

- `state()`: `Asleep` (nothing runs; `startable` says whether `start()` would help now),
  `Starting(phase, since)` (coming up; `since` is the wall time it began, for the ETA),
  `Up(url, since)` (the service should answer at `url`; the policy probes its readiness),
  or `Failed(cause, message)`;
- `start()`: begin starting; raises `BackendFailure`;
- `start_failure(ended_asleep=...)`: after a `start()` that has not led to a ready service
  yet, why it failed if the backend can tell (an operation error, a guest attribute the
  boot left before powering off), else None;
- `upstream_headers()`: headers to add to every proxied request and probe (a backend
  behind Google's IAM sends an ID token here; the VM needs none).

The policy (`text2img.gateway.waker.Waker`: one start for N requests, cooldowns, caches,
ETA, egress warm-up, 503 shapes) knows nothing else about a backend. `vm` is
`text2img.gateway.vm_backend.VmBackend`; `cloudrun` (a private Cloud Run GPU service)
plugs in here next.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Asleep:
    status: str  # the backend's own word for it (e.g. Compute's TERMINATED)
    message: str
    startable: bool = True  # False while it is still going down


@dataclass(frozen=True)
class Starting:
    phase: str  # "starting_vm" | "booting"
    since: float | None  # wall time the start began, when known
    message: str


@dataclass(frozen=True)
class Up:
    url: str  # base URL of the service, no trailing slash
    since: float | None  # wall time it started, when known


@dataclass(frozen=True)
class Failed:
    cause: str
    message: str
    lasting: bool = True  # held for the failure period, not retried at once


BackendState = Asleep | Starting | Up | Failed


class BackendFailure(Exception):
    """A backend call failed: a stable `cause` code and a message saying what to do."""

    def __init__(self, cause: str, message: str, *, lasting: bool = False) -> None:
        super().__init__(message)
        self.cause = cause
        self.message = message
        self.lasting = lasting

    def as_state(self) -> Failed:
        return Failed(self.cause, self.message, self.lasting)


class Backend(Protocol):
    """What the gateway's policy needs from a GPU backend (see the module docstring)."""

    def state(self) -> BackendState: ...
    def start(self) -> None: ...
    def start_failure(self, *, ended_asleep: bool) -> Failed | None: ...
    def upstream_headers(self) -> Mapping[str, str]: ...
