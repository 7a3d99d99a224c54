"""Where the VM and its endpoint are, for `scripts/vm`: the Pulumi stack outputs
(`pulumi stack output --json --show-secrets`) overridden by flags and environment
variables, and the Compute API clients."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from text2img import gce as compute
from text2img.gce import VmRef

REPO = Path(__file__).resolve().parent.parent


class VmError(Exception):
    """An error the user can fix; printed as one line."""


@dataclass
class Target:
    """Where the VM and its endpoint are."""

    vm: VmRef
    url: str | None
    token: str | None
    hourly_cost: float | None


def pulumi_outputs(stack: str | None) -> dict[str, Any]:
    exe = shutil.which("pulumi")
    if exe is None:
        raise VmError(
            "pulumi is not installed, so the stack outputs cannot be read; install it "
            "(https://www.pulumi.com/docs/install/) or pass --project, --zone and --instance"
        )
    cmd = [exe, "stack", "output", "--json", "--show-secrets"]
    if stack:
        cmd += ["--stack", stack]
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        raise VmError("`pulumi stack output` did not answer within 60 s") from exc
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        detail = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        raise VmError(
            f"cannot read the stack outputs ({detail}); run `pulumi up` first, select the "
            "stack with --stack, or pass --project, --zone and --instance"
        )
    try:
        data = json.loads(proc.stdout or "{}")
    except json.JSONDecodeError as exc:
        raise VmError("`pulumi stack output --json` printed something that is not JSON") from exc
    if not isinstance(data, dict):
        raise VmError("`pulumi stack output --json` did not print an object")
    return data


def resolve_target(args: argparse.Namespace) -> Target:
    env = os.environ
    given = {
        "project": args.project or env.get("TEXT2IMG_VM_PROJECT"),
        "zone": args.zone or env.get("TEXT2IMG_VM_ZONE"),
        "instance_name": args.instance or env.get("TEXT2IMG_VM_INSTANCE"),
        "url": args.url or env.get("TEXT2IMG_VM_URL"),
    }
    token_file = args.token_file or env.get("TEXT2IMG_VM_TOKEN_FILE")
    token: str | None = None
    if token_file:
        try:
            token = Path(token_file).read_text("utf-8").strip() or None
        except OSError as exc:
            raise VmError(f"cannot read the token file {token_file}: {exc.strerror}") from exc
    outputs: dict[str, Any] = {}
    have_vm = all(given[k] for k in ("project", "zone", "instance_name"))
    if not have_vm:
        outputs = pulumi_outputs(args.stack)
    elif args.needs_endpoint and not (given["url"] and token):
        try:  # the URL and token are optional extras when the VM was named by flags
            outputs = pulumi_outputs(args.stack)
        except VmError:
            outputs = {}

    def pick(key: str) -> str | None:
        value = given.get(key) or outputs.get(key)
        return str(value) if value else None

    project, zone = pick("project"), pick("zone")
    instance = pick("instance_name") or pick("instance")
    found = {"project": project, "zone": zone, "instance": instance}
    missing = [name for name, value in found.items() if not value]
    if missing or not (project and zone and instance):
        flags = ", ".join(f"--{m}" for m in missing)
        raise VmError(f"the stack outputs lack {', '.join(missing)}; pass {flags}")
    cost = outputs.get("hourly_cost_estimate")
    return Target(
        vm=VmRef(project, zone, instance),
        url=(pick("url") or "").rstrip("/") or None,
        token=token or (str(outputs["token"]) if outputs.get("token") else None),
        hourly_cost=float(cost) if isinstance(cost, int | float | str) and cost != "" else None,
    )


def instances_client() -> compute.compute_v1.InstancesClient:
    return compute.make_client(os.environ.get("TEXT2IMG_COMPUTE_ENDPOINT") or None)


def operations_client() -> compute.compute_v1.ZoneOperationsClient:
    return compute.make_operations_client(os.environ.get("TEXT2IMG_COMPUTE_ENDPOINT") or None)
