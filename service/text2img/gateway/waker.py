"""The gateway's policy in front of a GPU backend: is the service ready, waking, or failing
to start? Starts the backend once when needed.

One `Waker` per gateway process; it drives any `text2img.gateway.backend.Backend` and
knows nothing about Compute Engine. `check()` is cheap while the service is known to be
ready (a cached /readyz); otherwise one caller at a time asks the backend (its state is
reused for `state_cache_s`), a burst of requests causes exactly one `start()` per
`start_cooldown_s`, and a backend call that hangs holds nobody else for more than
`BUSY_WAIT_S`: they get 503 with the phase and Retry-After instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio.to_thread
import httpx

from text2img.gateway.backend import (
    Asleep,
    Backend,
    BackendFailure,
    BackendState,
    Failed,
    Starting,
    Up,
)
from text2img.gateway.egress import EgressState
from text2img.gateway.settings import GatewaySettings

log = logging.getLogger("text2img.gateway")

TRANSIENT_HOLD_S = 5.0
MIN_ETA_S = 5.0
BUSY_WAIT_S = 2.0  # longest a request waits for another request's backend call


@dataclass(frozen=True)
class Ready:
    base_url: str


@dataclass(frozen=True)
class Waking:
    phase: str  # "starting_vm" | "booting" | "connecting" | "loading_model"
    eta_s: float
    retry_after_s: int
    message: str


@dataclass(frozen=True)
class StartFailed:
    cause: str
    message: str
    retry_after_s: int


Decision = Ready | Waking | Asleep | StartFailed


class Waker:
    def __init__(
        self,
        settings: GatewaySettings,
        backend: Backend,
        http: httpx.AsyncClient,
        token: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.http = http
        self.token = token
        self.clock = clock
        self.wall = wall
        self.learned_wake_s: float | None = None
        self._lock = asyncio.Lock()
        self._ready_url: str | None = None
        self._ready_until = 0.0
        self._observed: tuple[float, BackendState] | None = None
        self._start_sent_at: float | None = None  # monotonic: the cooldown's origin
        self._pending = False  # a start of ours has not led to a ready service yet
        self._wake_began: float | None = None  # wall time the current wake began
        self._failure: tuple[StartFailed, float] | None = None
        self._recent: tuple[float, Waking] | None = None  # reused for `state_cache_s`
        self._busy_phase = "starting_vm"  # what the call in flight is about
        self.egress = EgressState(settings.egress_warmup_s)

    def invalidate(self) -> None:
        """Forget that the service was ready (the upstream stopped answering)."""
        self._ready_url = None
        self._observed = None
        self._recent = None

    async def check(self, *, wake: bool = True) -> Decision:
        if self._ready_url is not None and self.clock() < self._ready_until:
            return Ready(self._ready_url)
        try:
            await asyncio.wait_for(self._lock.acquire(), BUSY_WAIT_S)
        except TimeoutError:
            return self._busy()
        try:
            return await self._check_locked(wake)
        finally:
            self._lock.release()

    def _busy(self) -> Waking:
        """The answer while another request's backend call is still in flight."""
        if self._recent is not None:
            return self._recent[1]
        eta = self._eta(None)
        return Waking(
            self._busy_phase,
            eta,
            3,
            "the gateway is still waiting for an answer about the GPU backend; retry in a "
            "few seconds",
        )

    async def _check_locked(self, wake: bool) -> Decision:
        now = self.clock()
        if self._ready_url is not None and now < self._ready_until:
            return Ready(self._ready_url)
        if self._failure is not None:
            failed, until = self._failure
            if now < until:
                return StartFailed(failed.cause, failed.message, max(1, int(until - now)))
            self._failure = None
        if self._recent is not None and now - self._recent[0] < self.settings.state_cache_s:
            # a burst of requests while it boots: one backend call and one probe answer
            # them all
            return self._recent[1]
        try:
            state = await self._state(now)
        except BackendFailure as exc:
            return self._fail(exc.as_state())
        decision = await self._decide(state, wake)
        self._recent = (self.clock(), decision) if isinstance(decision, Waking) else None
        return decision

    async def _state(self, now: float) -> BackendState:
        if self._observed is not None and now - self._observed[0] < self.settings.state_cache_s:
            return self._observed[1]
        self._busy_phase = "starting_vm"
        state = await anyio.to_thread.run_sync(self.backend.state)
        self._observed = (self.clock(), state)
        return state

    async def _decide(self, state: BackendState, wake: bool) -> Decision:
        if isinstance(state, Failed):
            return self._fail(state)
        if isinstance(state, Up):
            return await self._up(state)
        if self._pending:
            ended_asleep = isinstance(state, Asleep) and state.startable
            try:
                failed = await anyio.to_thread.run_sync(
                    lambda: self.backend.start_failure(ended_asleep=ended_asleep)
                )
            except BackendFailure as exc:
                failed = exc.as_state()
            if failed is not None:
                return self._fail(failed)
        if isinstance(state, Starting):
            return self._waking(state.phase, state.since, state.message)
        if not wake:
            return state
        if not state.startable:
            # the client's retry (Retry-After) arrives after it has stopped and starts it
            return Waking("starting_vm", self._eta(None), 5, state.message)
        cooldown = self.settings.start_cooldown_s
        if self._start_sent_at is None or self.clock() - self._start_sent_at >= cooldown:
            # counted as sent before the call: a start that hangs or times out may still
            # have reached the backend, and must not be sent again within the cooldown
            self._start_sent_at = self.clock()
            self._wake_began = self.wall()
            self._pending = True
            try:
                await anyio.to_thread.run_sync(self.backend.start)
            except BackendFailure as exc:
                if exc.lasting:  # a clear refusal: nothing started
                    self._start_sent_at = None
                return self._fail(exc.as_state())
        return self._waking("starting_vm", None, "waking the GPU VM")

    async def _up(self, state: Up) -> Decision:
        # A backend that may still be booting refuses connections because it is booting:
        # say so at once. Only one that should be serving gets the egress warm-up retries.
        maybe_booting = self._maybe_booting(state)
        self._busy_phase = "connecting"
        phase = await self._probe(state.url, warmup=not maybe_booting)
        if phase == "ready":
            began = self._wake_began or state.since
            if self._pending and began is not None:
                took = self.wall() - began
                if 1.0 <= took <= 1800.0:
                    self.learned_wake_s = took
                    log.info("the GPU backend woke in %.0f s", took)
            self._pending, self._wake_began, self._start_sent_at = False, None, None
            self._ready_url = state.url
            self._ready_until = self.clock() + self.settings.ready_cache_s
            return Ready(state.url)
        if phase == "token_mismatch":
            # not held like a start failure: it heals as soon as the VM has the new token
            return StartFailed(
                "TOKEN_MISMATCH",
                "the service on the GPU VM does not accept the gateway's token: the token "
                "was changed and the VM still has the old one. Restart the VM (`scripts/vm "
                "stop`; the next request starts it, and it reads the new token when it boots)",
                30,
            )
        if phase == "booting" and not self.egress.reached and not maybe_booting:
            # a fresh gateway instance whose egress is not up yet: the VM may well be ready
            return Waking(
                "connecting",
                MIN_ETA_S,
                3,
                "the gateway is still opening its network path to the GPU VM (a new gateway "
                "instance can need up to a minute); retry in a few seconds",
            )
        message = (
            "the GPU VM is up; the service is loading the model"
            if phase == "loading_model"
            else "the GPU VM is booting and starting the service"
        )
        return self._waking(phase, state.since, message)

    def _maybe_booting(self, state: Up) -> bool:
        """Whether it started recently enough that its service may still be booting."""
        if self._pending:
            return True
        return state.since is None or self.wall() - state.since < self.expected_wake_s()

    async def _probe(self, url: str, *, warmup: bool = True) -> str:
        headers = {**self.backend.upstream_headers(), "Authorization": f"Bearer {self.token}"}
        try:
            resp = await self.egress.get(
                self.http,
                f"{url}/v1/ready",  # Cloud Run reserves some paths ending in "z"
                headers=headers,
                timeout=self.settings.probe_timeout_s,
                warmup=warmup,
            )
        except httpx.HTTPError:
            return "booting"
        if resp.status_code == 200:
            return "ready"
        if resp.status_code in (401, 403) or _throttled(resp):
            return "token_mismatch"
        try:
            phase = resp.json().get("phase")
        except (ValueError, AttributeError):
            phase = None
        if resp.status_code == 503 and phase in ("loading_model", "booting"):
            return str(phase)
        return "loading_model" if resp.status_code == 503 else "booting"

    def _fail(self, failed: Failed) -> StartFailed:
        log.warning("GPU backend start failed: %s: %s", failed.cause, failed.message)
        # lasting causes are held (retries would fail the same way); a passing hiccup
        # only briefly. The hold counts from now, when the failure is known (a call that
        # timed out after 20 s must not find its back-off already over).
        hold = (
            self.settings.failure_hold_s
            if failed.lasting
            else min(TRANSIENT_HOLD_S, self.settings.failure_hold_s)
        )
        result = StartFailed(failed.cause, failed.message, max(1, int(hold)))
        self._failure = (result, self.clock() + hold)
        self._pending, self._wake_began = False, None
        self._observed = None
        return result

    def expected_wake_s(self) -> float:
        return self.learned_wake_s or self.settings.typical_wake_s

    def _eta(self, since: float | None) -> float:
        """Seconds left of the expected wake, within [MIN_ETA_S, the whole wake] (a clock
        that disagrees with the backend's timestamps cannot make it grow past that)."""
        began = self._wake_began or since or self.wall()
        expected = self.expected_wake_s()
        return min(max(MIN_ETA_S, expected - (self.wall() - began)), max(expected, MIN_ETA_S))

    def _waking(self, phase: str, since: float | None, message: str) -> Waking:
        eta = self._eta(since)
        retry = int(min(10.0, max(2.0, eta / 4)))
        return Waking(phase, eta, retry, f"{message}; about {round(eta)} s to go")


def _throttled(resp: httpx.Response) -> bool:
    """The service's 429 for too many wrong tokens (not its queue_full)."""
    if resp.status_code != 429:
        return False
    try:
        return bool(resp.json()["error"]["code"] == "auth_throttled")
    except (ValueError, KeyError, TypeError):
        return False
