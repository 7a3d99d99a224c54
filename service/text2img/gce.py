"""The GPU VM through the Compute Engine API (google-cloud-compute, REST), shared by the
gateway's VM backend (`text2img.gateway.vm_backend`) and `scripts/vm`.

Calls here are synchronous (the generated client is); the gateway runs them in a worker
thread. Errors come back as `ComputeFailure`: a cause code and a message that says what
the user can do, never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth import exceptions as auth_exc
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

# Compute Engine instance states (https://cloud.google.com/compute/docs/instances/instance-life-cycle)
ASLEEP_STATES = frozenset({"TERMINATED", "STOPPED"})
SUSPENDED_STATES = frozenset({"SUSPENDED"})
GOING_DOWN_STATES = frozenset({"STOPPING", "SUSPENDING", "PENDING_STOP"})
BOOTING_STATES = frozenset({"PROVISIONING", "STAGING", "REPAIRING"})
CALL_TIMEOUT_S = 20.0
# error reasons of an API rate limit (HTTP 429; its message says "Quota exceeded for quota
# metric ..." although no resource quota is involved):
# https://cloud.google.com/compute/docs/troubleshooting/troubleshooting-api-rate-limits
RATE_LIMIT_REASONS = frozenset(
    {"RATELIMITEXCEEDED", "RATE_LIMIT_EXCEEDED", "USERRATELIMITEXCEEDED"}
)


@dataclass(frozen=True)
class InstanceInfo:
    """What the gateway and `scripts/vm` need to know about the VM."""

    name: str
    status: str
    internal_ip: str | None
    last_start: datetime | None
    last_stop: datetime | None
    spot: bool
    machine_type: str
    gpus: tuple[str, ...]
    metadata: dict[str, str]  # only the kit's own `text2img-*` keys


@dataclass(frozen=True)
class OperationInfo:
    """A zone operation: done or not, and its error (cause code, message) if it failed."""

    name: str
    done: bool
    error_code: str | None
    error_message: str | None


class ComputeFailure(Exception):
    """A Compute API call failed; `cause` is a stable code, the message says what to do."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause
        self.message = message


@dataclass(frozen=True)
class VmRef:
    project: str
    zone: str
    instance: str

    def describe(self) -> str:
        return f"VM '{self.instance}' (project {self.project}, zone {self.zone})"


def make_client(endpoint: str | None = None) -> compute_v1.InstancesClient:
    """An InstancesClient; with an endpoint override (tests) it uses anonymous credentials."""
    if endpoint:
        return compute_v1.InstancesClient(
            client_options=ClientOptions(api_endpoint=endpoint),
            credentials=AnonymousCredentials(),
        )
    try:
        return compute_v1.InstancesClient()
    except auth_exc.DefaultCredentialsError as exc:
        raise ComputeFailure(
            "NO_CREDENTIALS",
            "no Google Cloud credentials found; run `gcloud auth application-default login` "
            "(or set GOOGLE_APPLICATION_CREDENTIALS)",
        ) from exc


def make_operations_client(endpoint: str | None = None) -> compute_v1.ZoneOperationsClient:
    if endpoint:
        return compute_v1.ZoneOperationsClient(
            client_options=ClientOptions(api_endpoint=endpoint),
            credentials=AnonymousCredentials(),
        )
    try:
        return compute_v1.ZoneOperationsClient()
    except auth_exc.DefaultCredentialsError as exc:
        raise ComputeFailure(
            "NO_CREDENTIALS",
            "no Google Cloud credentials found; run `gcloud auth application-default login`",
        ) from exc


def _timestamp(value: str) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _last_segment(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def instance_info(inst: compute_v1.Instance) -> InstanceInfo:
    ip = inst.network_interfaces[0].network_i_p if inst.network_interfaces else ""
    sched = inst.scheduling
    spot = sched.provisioning_model == "SPOT" or bool(sched.preemptible)
    gpus = tuple(
        f"{acc.accelerator_count} x {_last_segment(acc.accelerator_type)}"
        for acc in inst.guest_accelerators
    )
    return InstanceInfo(
        name=inst.name,
        status=inst.status or "UNKNOWN",
        internal_ip=ip or None,
        last_start=_timestamp(inst.last_start_timestamp),
        last_stop=_timestamp(inst.last_stop_timestamp),
        spot=spot,
        machine_type=_last_segment(inst.machine_type) if inst.machine_type else "",
        gpus=gpus,
        metadata={
            item.key: item.value for item in inst.metadata.items if item.key.startswith("text2img-")
        },
    )


def get_instance(client: compute_v1.InstancesClient, vm: VmRef) -> InstanceInfo:
    try:
        inst = client.get(
            project=vm.project, zone=vm.zone, instance=vm.instance, timeout=CALL_TIMEOUT_S
        )
    except Exception as exc:
        raise classify(exc, vm, action="read") from exc
    return instance_info(inst)


def start_instance(client: compute_v1.InstancesClient, vm: VmRef, *, resume: bool = False) -> str:
    """Ask Compute to start (or resume) the VM; returns the operation name without waiting.

    `start_unary` returns the zone operation as soon as Compute accepted the request; the
    boot itself takes minutes and is observed through the instance's status. Failures that
    Compute only reports on the operation (no GPU capacity) are read with `get_operation`.
    """
    call = client.resume_unary if resume else client.start_unary
    try:
        op = call(project=vm.project, zone=vm.zone, instance=vm.instance, timeout=CALL_TIMEOUT_S)
    except Exception as exc:
        raise classify(exc, vm, action="start") from exc
    info = operation_info(op)
    if info.done and info.error_code:
        raise failure_from_code(info.error_code, info.error_message or "", vm)
    return info.name


def stop_instance(client: compute_v1.InstancesClient, vm: VmRef) -> str:
    try:
        op = client.stop_unary(
            project=vm.project, zone=vm.zone, instance=vm.instance, timeout=CALL_TIMEOUT_S
        )
    except Exception as exc:
        raise classify(exc, vm, action="stop") from exc
    info = operation_info(op)
    if info.done and info.error_code:
        raise failure_from_code(info.error_code, info.error_message or "", vm)
    return info.name


def operation_info(op: compute_v1.Operation) -> OperationInfo:
    code = message = None
    if op.error and op.error.errors:
        first = op.error.errors[0]
        code, message = first.code or "UNKNOWN", first.message or ""
    return OperationInfo(
        name=op.name, done=op.status == compute_v1.Operation.Status.DONE, error_code=code,
        error_message=message,
    )  # fmt: skip


def get_operation(ops: compute_v1.ZoneOperationsClient, vm: VmRef, name: str) -> OperationInfo:
    try:
        op = ops.get(project=vm.project, zone=vm.zone, operation=name, timeout=CALL_TIMEOUT_S)
    except Exception as exc:
        raise classify(exc, vm, action="read the start operation of") from exc
    return operation_info(op)


BOOT_FAILURE_NAMESPACE = "text2img"
BOOT_FAILURE_KEY = "boot-failure"


def boot_failure(client: compute_v1.InstancesClient, vm: VmRef) -> str | None:
    """The guest attribute text2img/boot-failure that the VM's startup script sets when the
    GPU driver did not load before it powered off (systemd/startup.sh), or None. Best
    effort: any failure to read it (none set answers 404) is None."""
    try:
        request = compute_v1.GetGuestAttributesInstanceRequest(
            project=vm.project,
            zone=vm.zone,
            instance=vm.instance,
            query_path=f"{BOOT_FAILURE_NAMESPACE}/",
        )
        attrs = client.get_guest_attributes(request=request, timeout=CALL_TIMEOUT_S)
    except Exception:
        return None
    for item in attrs.query_value.items:
        if item.namespace == BOOT_FAILURE_NAMESPACE and item.key == BOOT_FAILURE_KEY:
            return item.value or None
    return None


def serial_output(client: compute_v1.InstancesClient, vm: VmRef, start: int = 0) -> tuple[str, int]:
    """Serial port 1 output from byte offset `start`; returns (text, next offset)."""
    try:
        request = compute_v1.GetSerialPortOutputInstanceRequest(
            project=vm.project, zone=vm.zone, instance=vm.instance, port=1, start=start
        )
        out = client.get_serial_port_output(request=request, timeout=CALL_TIMEOUT_S)
    except Exception as exc:
        raise classify(exc, vm, action="read the serial port of") from exc
    return out.contents, int(out.next_)


# -- error classification -------------------------------------------------------------------


def _reasons(exc: gexc.GoogleAPICallError) -> list[str]:
    reasons: list[str] = []
    for err in exc.errors or []:
        if isinstance(err, dict):
            for key in ("reason", "code"):
                value = err.get(key)
                if isinstance(value, str):
                    reasons.append(value)
    if exc.reason:
        reasons.append(exc.reason)
    return reasons


def classify(exc: Exception, vm: VmRef, *, action: str) -> ComputeFailure:
    """Turn any exception from a Compute call into a ComputeFailure saying what to do."""
    if isinstance(exc, ComputeFailure):
        return exc
    if isinstance(exc, auth_exc.DefaultCredentialsError):
        return ComputeFailure(
            "NO_CREDENTIALS",
            "no Google Cloud credentials found; run `gcloud auth application-default login`",
        )
    if isinstance(exc, auth_exc.RefreshError):
        return ComputeFailure(
            "NO_CREDENTIALS",
            f"Google Cloud credentials could not be refreshed ({exc}); run "
            "`gcloud auth application-default login` again",
        )
    if isinstance(exc, gexc.GoogleAPICallError):
        message = str(exc.message or exc)
        # decided by the error's reason, never by its text: a rate limit's message also
        # says "Quota exceeded"
        reasons = [reason.upper() for reason in _reasons(exc)]
        if any(reason in RATE_LIMIT_REASONS for reason in reasons) or (
            isinstance(exc, gexc.TooManyRequests) and not any("QUOTA" in r for r in reasons)
        ):
            return ComputeFailure(
                "RATE_LIMITED",
                f"the Compute API is rate limiting calls to {action} the {vm.describe()} "
                f"({message}); this passes by itself, retry in a minute",
            )
        for upper in reasons:
            if upper.startswith("ZONE_RESOURCE_POOL_EXHAUSTED") or "QUOTA" in upper:
                return failure_from_code(upper, message, vm)
        if "does not have enough resources" in message:
            return failure_from_code("ZONE_RESOURCE_POOL_EXHAUSTED", message, vm)
        if isinstance(exc, gexc.NotFound):
            return failure_from_code("NOT_FOUND", message, vm)
        if isinstance(exc, gexc.Forbidden | gexc.PermissionDenied | gexc.Unauthorized):
            return ComputeFailure(
                "PERMISSION_DENIED",
                f"not allowed to {action} the {vm.describe()}: {message}. Check that the "
                "caller's account has the permission (the gateway's service account gets it "
                "from `pulumi up`; for scripts/vm, `gcloud auth application-default login` "
                "as a project member)",
            )
        return ComputeFailure(
            (exc.reason or type(exc).__name__).upper(),
            f"the Compute API refused to {action} the {vm.describe()}: {message}; "
            "try again in a minute",
        )
    return ComputeFailure(
        "COMPUTE_UNREACHABLE",
        f"could not reach the Compute API to {action} the {vm.describe()}: {exc}; "
        "check the network and try again",
    )


def failure_from_code(code: str, message: str, vm: VmRef) -> ComputeFailure:
    """A ComputeFailure for a Compute error code (from an HTTP error or an operation)."""
    upper = code.upper()
    if upper.startswith("ZONE_RESOURCE_POOL_EXHAUSTED") or upper == "RESOURCE_EXHAUSTED":
        return ComputeFailure(
            "ZONE_RESOURCE_POOL_EXHAUSTED",
            f"Google Cloud has no free GPU for the {vm.describe()} right now. Try again in "
            "a few minutes, or move the VM to another zone with a T4: "
            "`scripts/vm move --zone <zone>` (it runs `pulumi config set zone <zone>` then "
            "`pulumi up`)",
        )
    if "QUOTA" in upper:
        detail = f" ({message})" if message else ""
        return ComputeFailure(
            "QUOTA_EXCEEDED",
            f"the project's quota does not allow starting the {vm.describe()}{detail}. "
            "Request more GPU quota (NVIDIA_T4_GPUS in the region and GPUS_ALL_REGIONS) at "
            "https://console.cloud.google.com/iam-admin/quotas, then try again",
        )
    if upper in {"NOT_FOUND", "NOTFOUND", "RESOURCE_NOT_FOUND"}:
        return ComputeFailure(
            "NOT_FOUND",
            f"the {vm.describe()} does not exist. Was it deleted? `pulumi up` recreates it; "
            "check the project, zone and instance name",
        )
    if upper in {"PERMISSION_DENIED", "FORBIDDEN"}:
        return ComputeFailure(
            "PERMISSION_DENIED",
            f"not allowed to start the {vm.describe()}: {message}. Check the gateway's "
            "service account binding (`pulumi up` restores it)",
        )
    return ComputeFailure(upper, f"starting the {vm.describe()} failed: {message or upper}")


def as_dict(info: InstanceInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "status": info.status,
        "internal_ip": info.internal_ip,
        "spot": info.spot,
        "machine_type": info.machine_type,
        "gpus": list(info.gpus),
        "last_start": info.last_start.isoformat() if info.last_start else None,
        "last_stop": info.last_stop.isoformat() if info.last_stop else None,
    }
