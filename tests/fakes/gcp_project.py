"""A local fake of the Google Cloud REST APIs that `scripts/vm preflight`, the preflight
at the start of `pulumi up` and `scripts/vm move` call, in their real JSON shapes:

  * Compute Engine v1 (what google-cloud-compute's REST transport sends): regions.get
    (quotas, zones), projects.get (GPUS_ALL_REGIONS), acceleratorTypes.get, instances.get
    / stop, disks.get / createSnapshot, snapshots.get, zone and global operations get;
  * Cloud Billing v1 projects.getBillingInfo;
  * Service Usage v1 services.list (filter=state:ENABLED) and services.enable;
  * Resource Manager v1 projects.getEffectiveOrgPolicy.

All on one loopback port: the paths do not overlap. State is plain attributes a test sets
(`quotas`, `billing_enabled`, `enabled_apis`, `org_policies`, `gpu_zones`, ...); `calls`
counts requests per route name, `forbidden` makes a route answer 403 like a missing
permission.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.fakes.http_server import base_url, serve_http

P = r"^/compute/v1/projects/(?P<project>[^/]+)"
Z = P + r"/zones/(?P<zone>[^/]+)"
ROUTES = [
    ("GET", re.compile(P + r"/regions/(?P<region>[^/]+)$"), "region"),
    ("GET", re.compile(P + r"$"), "project"),
    ("GET", re.compile(Z + r"/acceleratorTypes/(?P<name>[^/]+)$"), "accelerator"),
    ("GET", re.compile(Z + r"/instances/(?P<name>[^/]+)$"), "instance"),
    ("POST", re.compile(Z + r"/instances/(?P<name>[^/]+)/stop$"), "stop"),
    ("GET", re.compile(Z + r"/disks/(?P<name>[^/]+)$"), "disk"),
    ("POST", re.compile(Z + r"/disks/(?P<name>[^/]+)/createSnapshot$"), "snapshot_create"),
    ("GET", re.compile(P + r"/global/snapshots/(?P<name>[^/]+)$"), "snapshot"),
    ("GET", re.compile(Z + r"/operations/(?P<name>[^/]+)$"), "operation"),
    ("POST", re.compile(Z + r"/operations/(?P<name>[^/]+)/wait$"), "operation"),
    ("GET", re.compile(r"^/v1/projects/(?P<project>[^/]+)/billingInfo$"), "billing"),
    ("GET", re.compile(r"^/v1/projects/(?P<project>[^/]+)/services$"), "services"),
    (
        "POST",
        re.compile(r"^/v1/projects/(?P<project>[^/]+)/services/(?P<name>[^/:]+):enable$"),
        "enable",
    ),
    ("GET", re.compile(r"^/v1/operations/(?P<name>[^/]+)$"), "su_operation"),
    (
        "GET",
        re.compile(
            r"^/v1/projects/(?P<project>[^/]+)/locations/global/services/run\.googleapis\.com/"
            r"quotaInfos/(?P<quota>[^/]+)$"
        ),
        "quota_info",
    ),
    (
        "POST",
        re.compile(r"^/v1/projects/(?P<project>[^/:]+):getEffectiveOrgPolicy$"),
        "org_policy",
    ),
]


def _error(code: int, status: str, message: str, reason: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message, "status": status}
    if reason:
        body["errors"] = [{"message": message, "domain": "global", "reason": reason}]
    return {"error": body}


@dataclass
class FakeGoogleProject:
    """One project's answers. Defaults: a healthy project in asia-northeast1 with T4 quota."""

    project: str = "t2i-test-project"
    region: str = "asia-northeast1"
    zones: tuple[str, ...] = ("a", "b", "c")
    gpu_zones: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {"nvidia-tesla-t4": ("a", "c")}
    )
    # region quota metric -> (limit, usage)
    quotas: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {
            "NVIDIA_T4_GPUS": (1.0, 0.0),
            "PREEMPTIBLE_NVIDIA_T4_GPUS": (0.0, 0.0),
            "CPUS": (24.0, 0.0),
            "PREEMPTIBLE_CPUS": (0.0, 0.0),
            "SSD_TOTAL_GB": (500.0, 0.0),
        }
    )
    project_quotas: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {"GPUS_ALL_REGIONS": (1.0, 0.0), "SNAPSHOTS": (5000.0, 0.0)}
    )
    # Cloud Quotas (run.googleapis.com): quota id -> {region or None (default): value}
    run_quotas: dict[str, dict[str | None, int]] = field(default_factory=dict)
    billing_enabled: bool = True
    enabled_apis: set[str] = field(
        default_factory=lambda: {
            "compute.googleapis.com",
            "serviceusage.googleapis.com",
            "cloudresourcemanager.googleapis.com",
        }
    )
    enable_error: str | None = None  # services.enable fails with this FAILED_PRECONDITION
    # constraint (without "constraints/") -> the policy body getEffectiveOrgPolicy returns
    org_policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    forbidden: set[str] = field(default_factory=set)  # route names answering 403
    # Compute resources for `scripts/vm move`
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)
    disks: dict[str, dict[str, Any]] = field(default_factory=dict)
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)
    snapshot_error: str | None = None  # createSnapshot's operation ends with this error
    calls: Counter[str] = field(default_factory=Counter)
    requests: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._ops: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self, method: str) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw.strip() else {}
                status, answer = fake.dispatch(method, url.path, parse_qs(url.query), body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

        self._handler = Handler

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> FakeGoogleProject:
        self._running = contextlib.ExitStack()
        self._server = self._running.enter_context(serve_http(self._handler))
        return self

    def __exit__(self, *exc: object) -> None:
        self._running.close()

    @property
    def endpoint(self) -> str:
        return base_url(self._server)

    # -- helpers for tests ------------------------------------------------------------------

    def add_vm(self, name: str, zone: str, disk: str, status: str = "TERMINATED") -> None:
        base = f"{self.endpoint}/compute/v1/projects/{self.project}/zones/{zone}"
        self.disks[disk] = {
            "name": disk,
            "zone": f"{base.rsplit('/zones/', 1)[0]}/zones/{zone}",
            "sizeGb": "100",
            "status": "READY",
            "users": [f"{base}/instances/{name}"],
            "sourceImage": "https://www.googleapis.com/compute/v1/projects/"
            "deeplearning-platform-release/global/images/common-cu129-v20260416",
        }
        self.instances[name] = {
            "name": name,
            "status": status,
            "zone": f"{base.rsplit('/zones/', 1)[0]}/zones/{zone}",
            "disks": [{"boot": True, "source": f"{base}/disks/{disk}"}],
            "guestAccelerators": [
                {
                    "acceleratorType": f"{base}/acceleratorTypes/nvidia-tesla-t4",
                    "acceleratorCount": 1,
                }
            ],
        }

    # -- dispatch ---------------------------------------------------------------------------

    def dispatch(
        self, method: str, path: str, query: dict[str, list[str]], body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        for verb, pattern, name in ROUTES:
            match = pattern.match(path)
            if verb == method and match:
                with self._lock:
                    self.calls[name] += 1
                    self.requests.append((name, path, body))
                    if name in self.forbidden:
                        return 403, _error(
                            403, "PERMISSION_DENIED", f"Permission denied ({name})", "forbidden"
                        )
                    handler = getattr(self, f"_{name}")
                    result: tuple[int, dict[str, Any]] = handler(match.groupdict(), query, body)
                    return result
        return 404, _error(404, "NOT_FOUND", f"no fake route for {method} {path}", "notFound")

    def _quota_info(self, m: dict[str, str], q: Any, b: Any) -> tuple[int, dict[str, Any]]:
        values = self.run_quotas.get(m["quota"])
        if values is None:
            return 404, _error(404, "NOT_FOUND", f"quota {m['quota']} not found", "notFound")
        infos = [
            {"dimensions": {} if region is None else {"region": region},
             "details": {"value": str(value)}}
            for region, value in values.items()
        ]  # fmt: skip
        return 200, {"quotaId": m["quota"], "service": "run.googleapis.com",
                     "dimensionsInfos": infos}  # fmt: skip

    def _quota_list(self, quotas: dict[str, tuple[float, float]]) -> list[dict[str, Any]]:
        return [{"metric": m, "limit": lim, "usage": use} for m, (lim, use) in quotas.items()]

    def _region(self, m: dict[str, str], q: Any, b: Any) -> tuple[int, dict[str, Any]]:
        if m["region"] != self.region:
            return 404, _error(404, "NOT_FOUND", f"region {m['region']} not found", "notFound")
        base = f"https://www.googleapis.com/compute/v1/projects/{self.project}/zones"
        return 200, {
            "name": self.region,
            "status": "UP",
            "quotas": self._quota_list(self.quotas),
            "zones": [f"{base}/{self.region}-{z}" for z in self.zones],
        }

    def _project(self, m: dict[str, str], q: Any, b: Any) -> tuple[int, dict[str, Any]]:
        if "compute.googleapis.com" not in self.enabled_apis:
            return 403, _error(
                403,
                "PERMISSION_DENIED",
                "Compute Engine API has not been used in project before or it is disabled.",
                "accessNotConfigured",
            )
        return 200, {"name": m["project"], "quotas": self._quota_list(self.project_quotas)}

    def _accelerator(self, m: dict[str, str], q: Any, b: Any) -> tuple[int, dict[str, Any]]:
        letter = m["zone"].rsplit("-", 1)[-1]
        if letter not in self.gpu_zones.get(m["name"], ()):
            return 404, _error(
                404,
                "NOT_FOUND",
                f"The resource 'projects/{m['project']}/zones/{m['zone']}/acceleratorTypes/"
                f"{m['name']}' was not found",
                "notFound",
            )
        return 200, {"name": m["name"], "zone": m["zone"], "maximumCardsPerInstance": 4}

    def _instance(self, m: dict[str, str], q: Any, b: Any) -> tuple[int, dict[str, Any]]:
        vm = self.instances.get(m["name"])
        if vm is None or not vm["zone"].endswith("/" + m["zone"]):
            return 404, _error(404, "NOT_FOUND", f"instance {m['name']} not found", "notFound")
        return 200, vm

    def _operation_done(
        self, zone: str, kind: str, target: str, error: str | None = None
    ) -> dict[str, Any]:
        name = f"operation-{next(self._ids)}"
        op: dict[str, Any] = {
            "name": name,
            "operationType": kind,
            "status": "DONE",
            "progress": 100,
            "targetLink": target,
            "zone": zone,
        }
        if error:
            op["error"] = {"errors": [{"code": "RESOURCE_OPERATION_FAILED", "message": error}]}
            op["httpErrorStatusCode"] = 400
            op["httpErrorMessage"] = "BAD REQUEST"
        self._ops[name] = op
        return op

    def _stop(self, m: dict[str, str], q: Any, b: Any) -> tuple[int, dict[str, Any]]:
        status, vm = self._instance(m, q, b)
        if status != 200:
            return status, vm
        vm["status"] = "TERMINATED"
        return 200, self._operation_done(m["zone"], "stop", m["name"])

    def _disk(self, m: dict[str, str], q: Any, b: Any) -> tuple[int, dict[str, Any]]:
        disk = self.disks.get(m["name"])
        if disk is None or not disk["zone"].endswith("/" + m["zone"]):
            return 404, _error(404, "NOT_FOUND", f"disk {m['name']} not found", "notFound")
        return 200, disk

    def _snapshot_create(self, m: dict[str, str], q: Any, b: Any) -> tuple[int, dict[str, Any]]:
        status, disk = self._disk(m, q, b)
        if status != 200:
            return status, disk
        name = b.get("name", "")
        if name in self.snapshots:
            return 409, _error(
                409, "ALREADY_EXISTS", f"snapshot {name} already exists", "alreadyExists"
            )
        if not self.snapshot_error:
            self.snapshots[name] = {
                "name": name,
                "status": "READY",
                "sourceDisk": disk["zone"] + "/disks/" + m["name"],
                "diskSizeGb": disk["sizeGb"],
                "storageBytes": str(38 * 10**9),
                "storageLocations": b.get("storageLocations") or ["asia"],
                "labels": b.get("labels", {}),
                "description": b.get("description", ""),
            }
        return 200, self._operation_done(m["zone"], "createSnapshot", name, self.snapshot_error)

    def _snapshot(self, m: dict[str, str], q: Any, b: Any) -> tuple[int, dict[str, Any]]:
        snap = self.snapshots.get(m["name"])
        if snap is None:
            return 404, _error(404, "NOT_FOUND", f"snapshot {m['name']} not found", "notFound")
        return 200, snap

    def _operation(self, m: dict[str, str], q: Any, b: Any) -> tuple[int, dict[str, Any]]:
        op = self._ops.get(m["name"])
        if op is None:
            return 404, _error(404, "NOT_FOUND", f"operation {m['name']} not found", "notFound")
        return 200, op

    def _billing(self, m: dict[str, str], q: Any, b: Any) -> tuple[int, dict[str, Any]]:
        account = "billingAccounts/000000-AAAAAA-BBBBBB" if self.billing_enabled else ""
        return 200, {
            "name": f"projects/{m['project']}/billingInfo",
            "projectId": m["project"],
            "billingAccountName": account,
            "billingEnabled": self.billing_enabled,
        }

    def _services(
        self, m: dict[str, str], q: dict[str, list[str]], b: Any
    ) -> tuple[int, dict[str, Any]]:
        assert q.get("filter") == ["state:ENABLED"], q
        return 200, {
            "services": [
                {
                    "name": f"projects/123456789012/services/{api}",
                    "config": {"name": api},
                    "state": "ENABLED",
                }
                for api in sorted(self.enabled_apis)
            ]
        }

    def _enable(self, m: dict[str, str], q: Any, b: Any) -> tuple[int, dict[str, Any]]:
        if self.enable_error:
            return 400, _error(400, "FAILED_PRECONDITION", self.enable_error)
        self.enabled_apis.add(m["name"])
        name = f"operations/acf.p2-{next(self._ids)}"
        self._ops[name] = {"name": name, "done": True, "response": {}}
        return 200, {"name": name}

    def _su_operation(self, m: dict[str, str], q: Any, b: Any) -> tuple[int, dict[str, Any]]:
        op = self._ops.get(f"operations/{m['name']}")
        if op is None:
            return 404, _error(404, "NOT_FOUND", "operation not found")
        return 200, op

    def _org_policy(
        self, m: dict[str, str], q: Any, b: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        constraint = str(b.get("constraint", ""))
        policy = self.org_policies.get(constraint.removeprefix("constraints/"), {})
        return 200, {"constraint": constraint, "etag": "BwXyz=", **policy}
