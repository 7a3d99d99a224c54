"""Is the VM's service ready, waking, or failing to start? Starts the VM once when needed.

One `Waker` per gateway process. `check()` is cheap while the service is known to be ready
(a cached /readyz); otherwise it serialises callers behind one lock, reuses a VM state seen
in the last `state_cache_s` seconds, and calls instances.start at most once per
`start_cooldown_s`, so a burst of requests to a sleeping VM causes exactly one start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import anyio.to_thread
import httpx

from text2img.gateway import compute
from text2img.gateway.compute import ComputeFailure, InstanceInfo, OperationInfo, VmRef
from text2img.gateway.egress import EgressState
from text2img.gateway.settings import GatewaySettings

log = logging.getLogger("text2img.gateway")

OPERATION_POLL_S = 5.0
TRANSIENT_HOLD_S = 5.0
LASTING_CAUSES = frozenset(
    {"ZONE_RESOURCE_POOL_EXHAUSTED", "QUOTA_EXCEEDED", "PERMISSION_DENIED", "NOT_FOUND",
     "NO_CREDENTIALS", "GPU_DRIVER"}
)  # fmt: skip
MIN_ETA_S = 5.0


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
class Asleep:
    status: str
    message: str


@dataclass(frozen=True)
class StartFailed:
    cause: str
    message: str
    retry_after_s: int


Decision = Ready | Waking | Asleep | StartFailed


class VmBackend(Protocol):
    """Synchronous VM operations (run in a worker thread by the Waker)."""

    def get(self) -> InstanceInfo: ...
    def start(self, *, resume: bool) -> str: ...
    def operation(self, name: str) -> OperationInfo: ...


class ComputeBackend:
    """VmBackend on google-cloud-compute; clients are created on first use (in a thread,
    because finding default credentials may ask the metadata server)."""

    def __init__(self, vm: VmRef, endpoint: str | None) -> None:
        self.vm = vm
        self.endpoint = endpoint
        self._instances: compute.compute_v1.InstancesClient | None = None
        self._operations: compute.compute_v1.ZoneOperationsClient | None = None

    def _client(self) -> compute.compute_v1.InstancesClient:
        if self._instances is None:
            self._instances = compute.make_client(self.endpoint)
        return self._instances

    def get(self) -> InstanceInfo:
        return compute.get_instance(self._client(), self.vm)

    def start(self, *, resume: bool) -> str:
        return compute.start_instance(self._client(), self.vm, resume=resume)

    def boot_failure(self) -> str | None:
        """What the VM reported before powering itself off (guest attribute), or None."""
        return compute.boot_failure(self._client(), self.vm)

    def operation(self, name: str) -> OperationInfo:
        if self._operations is None:
            self._operations = compute.make_operations_client(self.endpoint)
        return compute.get_operation(self._operations, self.vm, name)


class Waker:
    def __init__(
        self,
        settings: GatewaySettings,
        backend: VmBackend,
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
        self.start_calls = 0
        self.learned_wake_s: float | None = None
        self._lock = asyncio.Lock()
        self._ready_url: str | None = None
        self._ready_until = 0.0
        self._observed: tuple[float, InstanceInfo] | None = None
        self._start_at: float | None = None  # monotonic time of our last start call
        self._wake_began: float | None = None  # wall time the current wake began
        self._start_op: str | None = None
        self._op_checked_at = 0.0
        self._failure: tuple[StartFailed, float] | None = None
        self._recent: tuple[float, Waking] | None = None  # reused for `state_cache_s`
        self.egress = EgressState(settings.egress_warmup_s)

    def invalidate(self) -> None:
        """Forget that the service was ready (the upstream stopped answering)."""
        self._ready_url = None
        self._observed = None
        self._recent = None

    async def check(self, *, wake: bool = True) -> Decision:
        if self._ready_url is not None and self.clock() < self._ready_until:
            return Ready(self._ready_url)
        async with self._lock:
            now = self.clock()
            if self._ready_url is not None and now < self._ready_until:
                return Ready(self._ready_url)
            if self._failure is not None:
                failed, until = self._failure
                if now < until:
                    return StartFailed(failed.cause, failed.message, max(1, int(until - now)))
                self._failure = None
            if self._recent is not None and now - self._recent[0] < self.settings.state_cache_s:
                # a burst of requests while it boots: one Compute call and one probe answer
                # them all, instead of each waiting for its own probe behind the lock
                return self._recent[1]
            try:
                info = await self._instance(now)
            except ComputeFailure as exc:
                return self._fail(exc, now)
            decision = await self._decide(info, now, wake)
            self._recent = (self.clock(), decision) if isinstance(decision, Waking) else None
            return decision

    async def _instance(self, now: float) -> InstanceInfo:
        if self._observed is not None and now - self._observed[0] < self.settings.state_cache_s:
            return self._observed[1]
        info = await anyio.to_thread.run_sync(self.backend.get)
        self._observed = (self.clock(), info)
        return info

    async def _decide(self, info: InstanceInfo, now: float, wake: bool) -> Decision:
        status = info.status
        if status == "RUNNING":
            return await self._running(info)
        failed = await self._operation_failure(now)
        if failed is not None:
            return failed
        if status in compute.BOOTING_STATES:
            return self._waking("starting_vm", info, "the GPU VM is starting")
        if status in compute.GOING_DOWN_STATES:
            if not wake:
                return Asleep(status, "the GPU VM is powering off")
            # Compute refuses instances.start until the VM has stopped; the client's retry
            # (Retry-After) arrives after that and starts it.
            return Waking(
                "starting_vm",
                self._eta(info),
                5,
                "the GPU VM is powering off after being idle; it will be started again as "
                "soon as it has stopped",
            )
        if status in compute.ASLEEP_STATES or status in compute.SUSPENDED_STATES:
            if not wake:
                return Asleep(
                    status,
                    "the GPU VM is asleep; the next request that does work wakes it "
                    "(or run `scripts/vm start`)",
                )
            if self._start_at is not None:
                # our wake ended asleep again before the service was ready: the VM may
                # have powered itself off because the GPU driver did not load
                failed = await self._boot_failure(now)
                if failed is not None:
                    return failed
            in_cooldown = (
                self._start_at is not None and now - self._start_at < self.settings.start_cooldown_s
            )
            if not in_cooldown:
                try:
                    resume = status in compute.SUSPENDED_STATES
                    op = await anyio.to_thread.run_sync(lambda: self.backend.start(resume=resume))
                except ComputeFailure as exc:
                    return self._fail(exc, now)
                self.start_calls += 1
                self._start_at = self.clock()
                self._wake_began = self.wall()
                self._start_op = op
                self._op_checked_at = self._start_at
                log.info("started VM %s (operation %s)", info.name, op)
            return self._waking("starting_vm", info, "waking the GPU VM")
        return Waking("starting_vm", self._eta(info), 10, f"the GPU VM is {status.lower()}")

    async def _running(self, info: InstanceInfo) -> Decision:
        url = self._upstream(info)
        if url is None:
            return Waking("booting", self._eta(info), 5, "the GPU VM has no address yet")
        # A VM that may still be booting refuses connections because it is booting: say so
        # at once. Only a VM that should be serving gets the egress warm-up retries.
        maybe_booting = self._maybe_booting(info)
        phase = await self._probe(url, warmup=not maybe_booting)
        if phase == "ready":
            began = self._wake_began or _ts(info)
            if self._start_at is not None and began is not None:
                took = self.wall() - began
                if 1.0 <= took <= 1800.0:
                    self.learned_wake_s = took
                    log.info("VM woke in %.0f s", took)
            self._start_at = self._wake_began = self._start_op = None
            self._ready_url = url
            self._ready_until = self.clock() + self.settings.ready_cache_s
            return Ready(url)
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
        return self._waking(phase, info, message)

    def _maybe_booting(self, info: InstanceInfo) -> bool:
        """Whether the VM started recently enough that its service may still be booting."""
        if self._start_at is not None:
            return True
        began = _ts(info)
        return began is None or self.wall() - began < self.expected_wake_s()

    async def _probe(self, url: str, *, warmup: bool = True) -> str:
        try:
            resp = await self.egress.get(
                self.http,
                f"{url}/readyz",
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=self.settings.probe_timeout_s,
                warmup=warmup,
            )
        except httpx.HTTPError:
            return "booting"
        if resp.status_code == 200:
            return "ready"
        if resp.status_code in (401, 403) or _throttled(resp):
            # refused tokens get the service to throttle the gateway's own address: still
            # the same mismatch, not a boot
            return "token_mismatch"
        try:
            phase = resp.json().get("phase")
        except (ValueError, AttributeError):
            phase = None
        if resp.status_code == 503 and phase in ("loading_model", "booting"):
            return str(phase)
        return "loading_model" if resp.status_code == 503 else "booting"

    def _upstream(self, info: InstanceInfo) -> str | None:
        if self.settings.upstream_url:
            return self.settings.upstream_url.rstrip("/")
        if not info.internal_ip:
            return None
        return f"http://{info.internal_ip}:{self.settings.upstream_port}"

    async def _operation_failure(self, now: float) -> StartFailed | None:
        """Poll our pending start operation (rate limited); failures such as no GPU capacity
        only show up there."""
        if self._start_op is None or now - self._op_checked_at < OPERATION_POLL_S:
            return None
        name = self._start_op
        self._op_checked_at = now
        try:
            op = await anyio.to_thread.run_sync(lambda: self.backend.operation(name))
        except ComputeFailure as exc:
            log.warning("cannot read start operation %s: %s", name, exc.message)
            self._start_op = None
            return None
        if not op.done:
            return None
        self._start_op = None
        if op.error_code is None:
            return None
        failure = compute.failure_from_code(op.error_code, op.error_message or "", self._vm())
        return self._fail(failure, now)

    async def _boot_failure(self, now: float) -> StartFailed | None:
        reader = getattr(self.backend, "boot_failure", None)  # optional in VmBackend
        if reader is None:
            return None
        reason = await anyio.to_thread.run_sync(reader)
        if not reason:
            return None
        message = (
            f"the GPU VM powered itself off: GPU driver did not load ({reason}). Usually an "
            "automatic kernel update left the NVIDIA driver behind; see the README's "
            "troubleshooting (recreate the VM from a current image). A request after this "
            "notice tries once more"
        )
        return self._fail(ComputeFailure("GPU_DRIVER", message), now)

    def _vm(self) -> VmRef:
        s = self.settings
        return VmRef(s.project, s.zone, s.instance)

    def _fail(self, exc: ComputeFailure, now: float) -> StartFailed:
        log.warning("VM start failed: %s: %s", exc.cause, exc.message)
        # lasting causes are held (retries would fail the same way); a passing hiccup of
        # the Compute API only briefly
        hold = (
            self.settings.failure_hold_s
            if exc.cause in LASTING_CAUSES
            else min(TRANSIENT_HOLD_S, self.settings.failure_hold_s)
        )
        failed = StartFailed(exc.cause, exc.message, max(1, int(hold)))
        self._failure = (failed, now + hold)
        self._start_at = self._wake_began = self._start_op = None
        self._observed = None
        return failed

    def expected_wake_s(self) -> float:
        return self.learned_wake_s or self.settings.typical_wake_s

    def _eta(self, info: InstanceInfo) -> float:
        began = self._wake_began or _ts(info) or self.wall()
        return max(MIN_ETA_S, self.expected_wake_s() - (self.wall() - began))

    def _waking(self, phase: str, info: InstanceInfo, message: str) -> Waking:
        eta = self._eta(info)
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


def _ts(info: InstanceInfo) -> float | None:
    """Wall time of the VM's last start, when it is (still) running or booting."""
    if info.status in ("RUNNING", *compute.BOOTING_STATES) and info.last_start is not None:
        return info.last_start.timestamp()
    return None
