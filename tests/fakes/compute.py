"""A local fake of the Compute Engine REST API (the parts the kit uses), for tests.

Serves, on 127.0.0.1 with a free port, what `google.cloud.compute_v1.InstancesClient` and
`ZoneOperationsClient` call: instances get / start / stop / resume, getSerialPortOutput
and zone operations get, in the real JSON shapes (camelCase fields, Compute's error body).

    with FakeCompute() as fake:
        fake.add_instance("text2img-vm", status="TERMINATED")
        client = InstancesClient(client_options={"api_endpoint": fake.endpoint},
                                 credentials=AnonymousCredentials())

State transitions: start moves TERMINATED -> STAGING -> RUNNING after `boot_delay_s`
(or immediately when it is 0, or only on `fake.finish_boot()` when it is None); stop
moves RUNNING -> STOPPING -> TERMINATED after `stop_delay_s`. `on_start` / `on_stop`
hooks run when an instance reaches RUNNING / TERMINATED (the e2e test starts and kills a
real service process there). `calls` counts requests per kind; `inject()` makes the next
calls fail like the real API does.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.fakes.http_server import base_url, serve_http
from text2img.gateway.settings import GatewaySettings

BASE = r"^/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)"
ROUTES = [
    ("GET", re.compile(BASE + r"/instances/(?P<name>[^/]+)$"), "get"),
    ("POST", re.compile(BASE + r"/instances/(?P<name>[^/]+)/start$"), "start"),
    ("POST", re.compile(BASE + r"/instances/(?P<name>[^/]+)/stop$"), "stop"),
    ("POST", re.compile(BASE + r"/instances/(?P<name>[^/]+)/resume$"), "resume"),
    ("GET", re.compile(BASE + r"/instances/(?P<name>[^/]+)/serialPort$"), "serial"),
    ("GET", re.compile(BASE + r"/instances/(?P<name>[^/]+)/getGuestAttributes$"), "guest"),
    ("GET", re.compile(BASE + r"/operations/(?P<name>[^/]+)$"), "operation"),
    ("POST", re.compile(BASE + r"/operations/(?P<name>[^/]+)/wait$"), "operation"),
    # not Compute: what `systemctl poweroff` inside the guest does (tests' poweroff command)
    ("POST", re.compile(BASE + r"/instances/(?P<name>[^/]+)/fake-guest-poweroff$"), "poweroff"),
]

# Compute's real error bodies (HTTP errors) and operation error codes
FAILURES: dict[str, dict[str, Any]] = {
    "ZONE_RESOURCE_POOL_EXHAUSTED": {
        "http": 503,
        "reason": "resourceExhausted",
        "code": "ZONE_RESOURCE_POOL_EXHAUSTED",
        "message": "The zone 'projects/{project}/zones/{zone}' does not have enough "
        "resources available to fulfill the request.  Try a different zone, or try again "
        "later.",
    },
    "QUOTA_EXCEEDED": {
        "http": 403,
        "reason": "quotaExceeded",
        "code": "QUOTA_EXCEEDED",
        "message": "Quota 'NVIDIA_T4_GPUS' exceeded.  Limit: 0.0 in region asia-northeast1.",
    },
    "PERMISSION_DENIED": {
        "http": 403,
        "reason": "forbidden",
        "code": "PERMISSION_DENIED",
        "message": "Required 'compute.instances.start' permission for "
        "'projects/{project}/zones/{zone}/instances/{name}'",
    },
    "INTERNAL": {
        "http": 500,
        "reason": "backendError",
        "code": "INTERNAL_ERROR",
        "message": "Internal error. Please try again or contact Google Support. "
        "(Code: '5A1B2C3D4E')",
    },
    # an API rate limit: HTTP 429 whose message says "Quota exceeded" (no GPU quota involved)
    "RATE_LIMITED": {
        "http": 429,
        "reason": "rateLimitExceeded",
        "code": "RATE_LIMIT_EXCEEDED",
        "message": "Quota exceeded for quota metric 'Read requests' and limit 'Read requests "
        "per minute' of service 'compute.googleapis.com' for consumer 'project_number:1'.",
    },
    "NOT_FOUND": {
        "http": 404,
        "reason": "notFound",
        "code": "RESOURCE_NOT_FOUND",
        "message": "The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found",
    },
}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class FakeInstance:
    name: str
    status: str = "TERMINATED"
    internal_ip: str = "10.128.0.5"
    spot: bool = False
    machine_type: str = "n1-standard-4"
    last_start: str = ""
    last_stop: str = ""
    serial: str = ""
    # "namespace/key" -> value, what the guest wrote to instance/guest-attributes/
    guest_attributes: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(
        default_factory=lambda: {
            "startup-script": "#!/bin/bash\necho startup",
            "text2img-idle-minutes": "20",
            "text2img-port": "8080",
        }
    )


@dataclass
class Injection:
    failure: str
    via_operation: bool
    remaining: int | None


@dataclass
class FakeOperation:
    name: str
    kind: str
    target: str
    done: bool = False
    error: tuple[str, str] | None = None


@dataclass
class FakeCompute:
    project: str = "proj"
    zone: str = "asia-northeast1-a"
    boot_delay_s: float | None = 0.0
    stop_delay_s: float | None = 0.0
    on_start: Callable[[FakeInstance], None] | None = None
    on_stop: Callable[[FakeInstance], None] | None = None
    calls: Counter[str] = field(default_factory=Counter)
    instances: dict[str, FakeInstance] = field(default_factory=dict)
    operations: dict[str, FakeOperation] = field(default_factory=dict)
    _injections: dict[str, list[Injection]] = field(default_factory=dict)
    # kind -> an Event: calls of that kind hang until it is set (a hanging Compute API)
    gates: dict[str, threading.Event] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _timers: list[threading.Timer] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> FakeCompute:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake._handle(self, "GET")

            def do_POST(self) -> None:
                fake._handle(self, "POST")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._running = contextlib.ExitStack()
        self._server = self._running.enter_context(serve_http(Handler))
        return self

    def __exit__(self, *exc: object) -> None:
        for timer in self._timers:
            timer.cancel()
        self._running.close()

    @property
    def endpoint(self) -> str:
        return base_url(self._server)

    def gateway_settings(self, token: str, instance: str, **overrides: Any) -> GatewaySettings:
        """The gateway's settings for `instance` on this fake Compute API."""
        return GatewaySettings(
            api_token=token,
            project=self.project,
            zone=self.zone,
            instance=instance,
            compute_endpoint=self.endpoint,
            **overrides,
        )

    # -- test controls -------------------------------------------------------------------

    def add_instance(self, name: str, **kwargs: Any) -> FakeInstance:
        inst = FakeInstance(name=name, **kwargs)
        with self._lock:
            self.instances[name] = inst
        return inst

    def inject(
        self, kind: str, failure: str, *, via_operation: bool = False, times: int | None = 1
    ) -> None:
        """Make the next `times` calls of `kind` ("start", "get", …) fail with `failure`
        (a FAILURES key); `via_operation` reports it on the returned operation instead of
        as an HTTP error, like Compute does for no GPU capacity. times=None: until cleared."""
        with self._lock:
            self._injections.setdefault(kind, []).append(Injection(failure, via_operation, times))

    def clear_injections(self) -> None:
        with self._lock:
            self._injections.clear()

    def set_status(self, name: str, status: str) -> None:
        with self._lock:
            self.instances[name].status = status

    def finish_boot(self, name: str) -> None:
        self._reach(name, "RUNNING")

    def finish_stop(self, name: str) -> None:
        self._reach(name, "TERMINATED")

    def power_off(self, name: str) -> None:
        """What `systemctl poweroff` inside the guest does: RUNNING -> STOPPING ->
        TERMINATED (after `stop_delay_s`, at once when it is None or 0)."""
        with self._lock:
            self.instances[name].status = "STOPPING"
        if self.stop_delay_s:
            time.sleep(self.stop_delay_s)
        self._reach(name, "TERMINATED")

    def guest_poweroff_url(self, name: str) -> str:
        """POSTing here powers the instance off as if its guest ran `systemctl poweroff`."""
        return (
            f"{self.endpoint}/compute/v1/projects/{self.project}/zones/{self.zone}"
            f"/instances/{name}/fake-guest-poweroff"
        )

    # -- request handling ----------------------------------------------------------------

    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(req.path)
        length = int(req.headers.get("Content-Length") or 0)
        if length:
            req.rfile.read(length)
        for route_method, pattern, kind in ROUTES:
            match = pattern.match(url.path)
            if route_method == method and match:
                self.calls[kind] += 1
                gate = self.gates.get(kind)
                if gate is not None:
                    gate.wait(timeout=60)
                params = match.groupdict()
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                status, body = self._dispatch(kind, params, query)
                break
        else:
            status, body = 404, _error_body(404, "notFound", f"no route {method} {url.path}")
        payload = json.dumps(body).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json; charset=UTF-8")
        req.send_header("Content-Length", str(len(payload)))
        req.end_headers()
        req.wfile.write(payload)

    def _dispatch(
        self, kind: str, params: dict[str, str], query: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        with self._lock:
            fmt = dict(params)
            injected = self._take_injection(kind)
            if injected is not None and not injected.via_operation:
                spec = FAILURES[injected.failure]
                return spec["http"], _error_body(
                    spec["http"], spec["reason"], spec["message"].format(**fmt)
                )
            if params["project"] != self.project or params["zone"] != self.zone:
                return 404, _not_found(fmt)
            if kind == "operation":
                op = self.operations.get(params["name"])
                if op is None:
                    return 404, _not_found(fmt)
                return 200, self._op_json(op)
            inst = self.instances.get(params["name"])
            if inst is None:
                return 404, _not_found(fmt)
            if kind == "get":
                return 200, self._instance_json(inst)
            if kind == "poweroff":
                threading.Thread(target=self.power_off, args=(inst.name,), daemon=True).start()
                return 200, {}
            if kind == "guest":
                return self._guest_json(inst, query.get("queryPath", ""), fmt)
            if kind == "serial":
                start = int(query.get("start", "0"))
                return 200, {
                    "kind": "compute#serialPortOutput",
                    "contents": inst.serial[start:],
                    "start": str(start),
                    "next": str(len(inst.serial)),
                }
            op = FakeOperation(f"operation-{next(self._ids)}-{kind}", kind, inst.name)
            self.operations[op.name] = op
            if injected is not None:
                spec = FAILURES[injected.failure]
                op.done, op.error = True, (spec["code"], spec["message"].format(**fmt))
                return 200, self._op_json(op)
            if kind in ("start", "resume"):
                self._begin(inst, op, "STAGING", "RUNNING", self.boot_delay_s)
            elif kind == "stop":
                self._begin(inst, op, "STOPPING", "TERMINATED", self.stop_delay_s)
            return 200, self._op_json(op)

    def _begin(
        self, inst: FakeInstance, op: FakeOperation, middle: str, final: str, delay: float | None
    ) -> None:
        if inst.status == final or (final == "RUNNING" and inst.status in ("STAGING",)):
            op.done = True  # Compute accepts a start of a running VM as a no-op
            return
        if final == "RUNNING" and inst.status in ("STOPPING", "SUSPENDING"):
            op.done, op.error = True, ("RESOURCE_NOT_READY", "The resource is not ready")
            return
        inst.status = middle
        if delay == 0:
            self._reach(inst.name, final, op)
        elif delay is not None:
            timer = threading.Timer(delay, self._reach, args=(inst.name, final, op))
            timer.daemon = True
            self._timers.append(timer)
            timer.start()

    def _reach(self, name: str, final: str, op: FakeOperation | None = None) -> None:
        with self._lock:
            inst = self.instances[name]
            if inst.status == final:
                return
            inst.status = final
            if final == "RUNNING":
                inst.last_start = _now()
            else:
                inst.last_stop = _now()
            for pending in self.operations.values():
                if pending.target == name and not pending.done:
                    pending.done = True
            if op is not None:
                op.done = True
        hook = self.on_start if final == "RUNNING" else self.on_stop
        if hook is not None:
            hook(inst)

    def _take_injection(self, kind: str) -> Injection | None:
        queue = self._injections.get(kind)
        if not queue:
            return None
        first = queue[0]
        if first.remaining is not None:
            first.remaining -= 1
            if first.remaining <= 0:
                queue.pop(0)
        return first

    def _instance_json(self, inst: FakeInstance) -> dict[str, Any]:
        zone_url = (
            f"https://www.googleapis.com/compute/v1/projects/{self.project}/zones/{self.zone}"
        )
        body: dict[str, Any] = {
            "kind": "compute#instance",
            "id": str(abs(hash(inst.name)) % 10**18),
            "name": inst.name,
            "status": inst.status,
            "zone": zone_url,
            "machineType": f"{zone_url}/machineTypes/{inst.machine_type}",
            "networkInterfaces": [{"name": "nic0", "networkIP": inst.internal_ip}],
            "guestAccelerators": [
                {
                    "acceleratorType": f"{zone_url}/acceleratorTypes/nvidia-tesla-t4",
                    "acceleratorCount": 1,
                }
            ],
            "metadata": {
                "kind": "compute#metadata",
                "fingerprint": "abc=",
                "items": [{"key": k, "value": v} for k, v in inst.metadata.items()],
            },
            "scheduling": {
                "onHostMaintenance": "TERMINATE",
                "automaticRestart": False,
                "preemptible": inst.spot,
                "provisioningModel": "SPOT" if inst.spot else "STANDARD",
                **({"instanceTerminationAction": "STOP"} if inst.spot else {}),
            },
        }
        if inst.last_start:
            body["lastStartTimestamp"] = inst.last_start
        if inst.last_stop:
            body["lastStopTimestamp"] = inst.last_stop
        return body

    def _guest_json(
        self, inst: FakeInstance, path: str, fmt: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        """getGuestAttributes with a queryPath "ns/" (Compute answers 404 when none match)."""
        items = [
            {"namespace": k.split("/", 1)[0], "key": k.split("/", 1)[1], "value": v}
            for k, v in inst.guest_attributes.items()
            if k.startswith(path)
        ]
        if not items:
            return 404, _not_found(fmt)
        body = {
            "kind": "compute#guestAttributes",
            "queryPath": path,
            "queryValue": {"items": items},
        }
        return 200, body

    def _op_json(self, op: FakeOperation) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "compute#operation",
            "id": str(abs(hash(op.name)) % 10**18),
            "name": op.name,
            "operationType": op.kind,
            "zone": f"https://www.googleapis.com/compute/v1/projects/{self.project}/zones/{self.zone}",
            "targetLink": f"https://www.googleapis.com/compute/v1/projects/{self.project}"
            f"/zones/{self.zone}/instances/{op.target}",
            "status": "DONE" if op.done else "RUNNING",
            "progress": 100 if op.done else 0,
        }
        if op.error is not None:
            body["error"] = {"errors": [{"code": op.error[0], "message": op.error[1]}]}
            body["httpErrorStatusCode"] = 503
        return body


def _error_body(code: int, reason: str, message: str) -> dict[str, Any]:
    domain = "usageLimits" if reason in ("quotaExceeded", "rateLimitExceeded") else "global"
    return {
        "error": {
            "code": code,
            "message": message,
            "errors": [{"message": message, "domain": domain, "reason": reason}],
        }
    }


def _not_found(fmt: dict[str, str]) -> dict[str, Any]:
    spec = FAILURES["NOT_FOUND"]
    return _error_body(404, spec["reason"], spec["message"].format(**fmt))
