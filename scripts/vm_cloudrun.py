"""`scripts/vm status` for `backend: cloudrun`: there is no VM; Cloud Run starts and stops
L4 instances itself (docs/backends.md). Reads only the stack outputs: asking the private GPU
service anything would itself start an instance, which is billed."""

from __future__ import annotations

import json
from typing import Any


def cloudrun_status(outputs: dict[str, Any], *, as_json: bool) -> int:
    report = {
        "backend": "cloudrun",
        "project": outputs.get("project"),
        "gpu_region": outputs.get("gpu_region"),
        "max_gpus": outputs.get("max_gpus"),
        "gpu_service": outputs.get("gpu_url"),
        "url": outputs.get("url"),
    }
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    lines = [
        ("backend", "cloudrun (a private Cloud Run GPU service; no VM to start or stop)"),
        ("project", str(report["project"])),
        (
            "gpus",
            f"0 to {report['max_gpus']} x nvidia-l4 in {report['gpu_region']}, "
            "started by Cloud Run on demand",
        ),
        (
            "cost",
            "nothing while no instance runs but the image in Artifact Registry; about "
            "$1 per busy instance-hour (estimate, docs/backends.md); Cloud Run's billing "
            "reports show the real figures",
        ),
        ("service", str(report["gpu_service"])),
        ("url", str(report["url"])),
    ]
    for key, value in lines:
        print(f"{key:<9} {value}")
    return 0
