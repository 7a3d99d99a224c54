"""Backend `vm`: one GCE VM, started by the gateway and powering itself off when idle.

Everything the gateway knows about Compute Engine is here (through `text2img.gce`, which
`scripts/vm` uses too); the policy sees only `text2img.gateway.backend`'s states.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from google.cloud import compute_v1

from text2img import gce
from text2img.gateway.backend import Asleep, BackendFailure, BackendState, Failed, Starting, Up
from text2img.gce import ComputeFailure, VmRef

log = logging.getLogger("text2img.gateway")

OPERATION_POLL_S = 5.0
# failures that retrying at once would meet again: held for the failure period
LASTING_CAUSES = frozenset(
    {"ZONE_RESOURCE_POOL_EXHAUSTED", "QUOTA_EXCEEDED", "PERMISSION_DENIED", "NOT_FOUND",
     "NO_CREDENTIALS", "GPU_DRIVER", "PORT_IN_USE"}
)  # fmt: skip


def _failure(exc: ComputeFailure) -> BackendFailure:
    return BackendFailure(exc.cause, exc.message, lasting=exc.cause in LASTING_CAUSES)


def boot_failure_state(reason: str, port: int) -> Failed:
    """The failure a boot reported in the guest attribute `text2img/boot-failure`
    (systemd/startup.sh) before the VM powered itself off."""
    if "PORT_IN_USE" in reason.upper() or "address already in use" in reason.lower():
        return Failed(
            "PORT_IN_USE",
            f"the GPU VM powered itself off: the service could not listen on port {port} "
            f"because another program on the VM already uses it ({reason}). Find it with "
            f"`scripts/vm ssh` then `sudo ss -ltnp 'sport = :{port}'`, stop it, and retry "
            "(a request after this notice tries once more)",
        )
    return Failed(
        "GPU_DRIVER",
        f"the GPU VM powered itself off: GPU driver did not load ({reason}). Usually an "
        "automatic kernel update left the NVIDIA driver behind; see docs/operations.md, "
        "Troubleshooting (recreate the VM from a current image). A request after this "
        "notice tries once more",
    )


class VmBackend:
    """`text2img.gateway.backend.Backend` on the Compute Engine API (google-cloud-compute).

    Clients are created on first use (in the policy's worker thread: finding default
    credentials may ask the metadata server). `upstream_url` replaces the VM's internal
    address (tests).
    """

    def __init__(
        self,
        vm: VmRef,
        *,
        endpoint: str | None = None,
        port: int = 8080,
        upstream_url: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.vm = vm
        self.endpoint = endpoint
        self.port = port
        self.upstream_url = upstream_url.rstrip("/") if upstream_url else None
        self.clock = clock
        self._instances: compute_v1.InstancesClient | None = None
        self._operations: compute_v1.ZoneOperationsClient | None = None
        self._suspended = False
        self._start_op: str | None = None
        self._op_checked_at = 0.0

    def _client(self) -> compute_v1.InstancesClient:
        if self._instances is None:
            self._instances = gce.make_client(self.endpoint)
        return self._instances

    def state(self) -> BackendState:
        try:
            info = gce.get_instance(self._client(), self.vm)
        except ComputeFailure as exc:
            raise _failure(exc) from exc
        status = info.status
        since = _since(info)
        if status == "RUNNING":
            url = self.upstream_url or (
                f"http://{info.internal_ip}:{self.port}" if info.internal_ip else None
            )
            if url is None:
                return Starting("booting", since, "the GPU VM has no address yet")
            return Up(url, since)
        if status in gce.BOOTING_STATES:
            return Starting("starting_vm", since, "the GPU VM is starting")
        if status in gce.GOING_DOWN_STATES:
            # Compute refuses instances.start until the VM has stopped
            return Asleep(
                status,
                "the GPU VM is powering off after being idle; it will be started again as "
                "soon as it has stopped",
                startable=False,
            )
        if status in gce.ASLEEP_STATES or status in gce.SUSPENDED_STATES:
            self._suspended = status in gce.SUSPENDED_STATES
            return Asleep(
                status,
                "the GPU VM is asleep; the next request that does work wakes it "
                "(or run `scripts/vm start`)",
            )
        return Starting("starting_vm", None, f"the GPU VM is {status.lower()}")

    def start(self) -> None:
        try:
            op = gce.start_instance(self._client(), self.vm, resume=self._suspended)
        except ComputeFailure as exc:
            raise _failure(exc) from exc
        self._start_op = op
        self._op_checked_at = self.clock()
        log.info("started VM %s (operation %s)", self.vm.instance, op)

    def start_failure(self, *, ended_asleep: bool) -> Failed | None:
        failed = self._operation_failure()
        if failed is None and ended_asleep:
            # our wake ended asleep again before the service was ready: the VM may have
            # powered itself off (no GPU driver, port taken) and said why
            reason = gce.boot_failure(self._client(), self.vm)
            if reason:
                failed = boot_failure_state(reason, self.port)
        return failed

    def _operation_failure(self) -> Failed | None:
        """Our pending start operation's error (polled at most every OPERATION_POLL_S):
        failures such as no GPU capacity only show up there."""
        now = self.clock()
        if self._start_op is None or now - self._op_checked_at < OPERATION_POLL_S:
            return None
        name, self._op_checked_at = self._start_op, now
        try:
            if self._operations is None:
                self._operations = gce.make_operations_client(self.endpoint)
            op = gce.get_operation(self._operations, self.vm, name)
        except ComputeFailure as exc:
            log.warning("cannot read start operation %s: %s", name, exc.message)
            self._start_op = None
            return None
        if not op.done:
            return None
        self._start_op = None
        if op.error_code is None:
            return None
        return _failure(
            gce.failure_from_code(op.error_code, op.error_message or "", self.vm)
        ).as_state()

    def upstream_headers(self) -> Mapping[str, str]:
        return {}  # the VM's service is reached inside the VPC; the user's token suffices


def _since(info: gce.InstanceInfo) -> float | None:
    """Wall time of the VM's last start, when it is (still) running or booting."""
    if info.status in ("RUNNING", *gce.BOOTING_STATES) and info.last_start is not None:
        return info.last_start.timestamp()
    return None
