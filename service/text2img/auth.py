"""Bearer-token checks shared by the service and the gateway (no heavy imports).

The token comes from `TEXT2IMG_API_TOKEN` or a file; comparison is constant time;
clients that keep failing are throttled so a token cannot be guessed online.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from text2img.errors import UserError

MIN_TOKEN_LENGTH = 16


def load_token(value: str | None, file: str | Path | None) -> str | None:
    """The API token from a value or a file (value wins); None when neither is set."""
    if value:
        token = value.strip()
    elif file:
        path = Path(file)
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UserError(
                f"cannot read the API token file {path}: {exc.strerror}; "
                "fix the path or set TEXT2IMG_API_TOKEN instead"
            ) from exc
    else:
        return None
    if not token:
        raise UserError("the API token is empty; set a non-empty TEXT2IMG_API_TOKEN")
    if len(token) < MIN_TOKEN_LENGTH:
        raise UserError(
            f"the API token is shorter than {MIN_TOKEN_LENGTH} characters; use a long random "
            "one, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return token


def bearer_from_header(authorization: str | None) -> str | None:
    """The credential from an `Authorization: Bearer <token>` header, else None."""
    if not authorization:
        return None
    scheme, _, credential = authorization.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        return None
    return credential.strip()


def token_matches(presented: str | None, expected: str) -> bool:
    """Constant-time comparison of the presented token with the expected one."""
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


@dataclass
class _Record:
    failures: int
    window_start: float
    blocked_until: float


class FailureThrottle:
    """Counts failed attempts per client; after `max_failures` within `window_s` the client
    is refused for `block_s` seconds (doubling on repeat offences, capped at `max_block_s`).

    Memory is bounded: at most `max_clients` records, least recently seen evicted first.
    Thread-safe, so it can be shared by sync and async handlers.
    """

    def __init__(
        self,
        max_failures: int = 10,
        window_s: float = 60.0,
        block_s: float = 60.0,
        max_block_s: float = 3600.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.block_s = block_s
        self.max_block_s = max_block_s
        self.max_clients = max_clients
        self._clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._strikes: dict[str, int] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> float | None:
        """Seconds the client must wait, or None if it may try now."""
        now = self._clock()
        with self._lock:
            rec = self._records.get(client)
            if rec is None or rec.blocked_until <= now:
                return None
            return rec.blocked_until - now

    def failure(self, client: str) -> None:
        """Record one failed attempt by the client."""
        now = self._clock()
        with self._lock:
            rec = self._records.get(client)
            if rec is None or now - rec.window_start > self.window_s:
                rec = _Record(failures=0, window_start=now, blocked_until=0.0)
            rec.failures += 1
            if rec.failures >= self.max_failures:
                strikes = self._strikes.get(client, 0)
                rec.blocked_until = now + min(self.block_s * (2**strikes), self.max_block_s)
                self._strikes[client] = strikes + 1
                rec.failures = 0
                rec.window_start = now
            self._records[client] = rec
            self._records.move_to_end(client)
            while len(self._records) > self.max_clients:
                old, _ = self._records.popitem(last=False)
                self._strikes.pop(old, None)

    def success(self, client: str) -> None:
        """Forget the client's failures after a successful attempt."""
        with self._lock:
            self._records.pop(client, None)
            self._strikes.pop(client, None)
