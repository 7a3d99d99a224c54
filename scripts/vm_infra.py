"""`scripts/vm preflight` and `scripts/vm move --zone Z`: the commands that act on the
stack's configuration rather than on a running VM.

preflight: the checks `pulumi up` runs first (infra/preflight.py), for the settings the
next `pulumi up` would use: Pulumi.yaml's defaults, then `pulumi config --json` of the
selected stack, then --project / --zone.

move: a GPU stockout in one zone must not cost the cached weights. The boot disk is
zonal, so moving replaces it; the move first snapshots it (the VM is stopped for that),
then sets `zone` and `bootDiskSnapshot`, so the next `pulumi up` creates the disk in the
new zone from the snapshot (infra/server.py) and the VM boots with its image and weights.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import yaml
from google.api_core import exceptions as gexc
from google.cloud import compute_v1
from vm_target import REPO, VmError, resolve_target

if str(REPO) not in sys.path:  # the infra package, when scripts/vm runs as a script
    sys.path.insert(0, str(REPO))

from infra.config import NAMESPACE, ConfigError, Settings, read_settings
from infra.google_apis import GoogleApis, NoCredentials
from infra.preflight import run_checks, summary

MOVE_TIMEOUT_S = 3600.0  # a first snapshot copies every used block of the disk


def _pulumi(args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str] | None:
    exe = shutil.which("pulumi")
    if exe is None:
        return None
    proc = subprocess.run([exe, *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise VmError(
            f"`pulumi {' '.join(args)}` failed: {lines[-1] if lines else proc.returncode}"
        )
    return proc


def stack_config(stack: str | None) -> dict[str, str]:
    """`text2img:*` values of the selected stack ({} without pulumi or a stack)."""
    proc = _pulumi(["config", "--json", *(["--stack", stack] if stack else [])], check=False)
    if proc is None or proc.returncode != 0:
        return {}
    try:
        data = json.loads(proc.stdout or "{}")
    except json.JSONDecodeError:
        return {}
    prefix = f"{NAMESPACE}:"
    return {
        key.removeprefix(prefix): str(item.get("value", ""))
        for key, item in data.items()
        if key.startswith(prefix) and isinstance(item, dict) and "value" in item
    }


def _shown(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def next_up_settings(args: argparse.Namespace) -> Settings:
    spec = yaml.safe_load((REPO / "Pulumi.yaml").read_text())["config"]
    values = {k: _shown(d["default"]) for k, d in spec.items() if "default" in d}
    values.update(stack_config(args.stack))
    if args.project:
        values["project"] = args.project
    zone = args.check_zone or args.zone
    if zone:
        values["zone"] = zone
        values["region"] = zone.rsplit("-", 1)[0]
    try:
        return read_settings(values.get)
    except ConfigError as exc:
        raise VmError(f"{exc} (pass --project, or `pulumi config set project ...`)") from None


def cmd_preflight(args: argparse.Namespace) -> int:
    settings = next_up_settings(args)
    try:
        api = GoogleApis.from_environment()
    except NoCredentials as exc:
        raise VmError(str(exc)) from None
    findings = run_checks(api, settings, enable_compute=False)
    for finding in findings:
        print(f"{'problem' if finding.fatal else 'note'}: {finding.text}")
    print(summary(settings, findings))
    return 1 if any(f.fatal for f in findings) else 0


# -- move ---------------------------------------------------------------------------------


def _wait(api: GoogleApis, project: str, zone: str, operation: Any, what: str) -> None:
    try:
        operation.result(timeout=MOVE_TIMEOUT_S)
    except gexc.GoogleAPICallError as exc:  # the operation's own errors say why
        try:
            op = api.zone_operations().get(project=project, zone=zone, operation=operation.name)
            why = "; ".join(e.message for e in op.error.errors) or exc.message
        except gexc.GoogleAPICallError:
            why = exc.message
        raise VmError(f"{what} failed: {why}") from exc
    except TimeoutError as exc:
        raise VmError(f"{what} did not finish within {MOVE_TIMEOUT_S / 60:.0f} min") from exc
    if getattr(operation, "error_code", None):
        raise VmError(f"{what} failed: {operation.error_message}")


def snapshot_name(disk: str, now: datetime) -> str:
    return f"{disk}-move-{now:%Y%m%d-%H%M%S}"[:63]


def cmd_move(args: argparse.Namespace) -> int:
    args.needs_endpoint = False
    target = resolve_target(args)  # the VM's own zone: the stack's (or the global --zone)
    vm, new_zone = target.vm, args.to_zone
    region = vm.zone.rsplit("-", 1)[0]
    if new_zone == vm.zone:
        raise VmError(f"the VM is already in {vm.zone}")
    if new_zone.rsplit("-", 1)[0] != region:
        raise VmError(
            f"{new_zone} is not in region {region}: a move stays in the region "
            "(the network, registry and gateway are regional)"
        )
    try:
        api = GoogleApis.from_environment()
    except NoCredentials as exc:
        raise VmError(str(exc)) from None
    instances = api.instances()
    try:
        info = instances.get(project=vm.project, zone=vm.zone, instance=vm.instance)
    except gexc.NotFound:
        raise VmError(f"instance {vm.instance} not found in {vm.zone}") from None
    gpu = (
        info.guest_accelerators[0].accelerator_type.rsplit("/", 1)[-1]
        if info.guest_accelerators
        else ""
    )
    if gpu:
        try:
            api.accelerator_types().get(project=vm.project, zone=new_zone, accelerator_type=gpu)
        except gexc.NotFound:
            raise VmError(
                f"{new_zone} does not offer {gpu}; `scripts/vm preflight --zone "
                f"{new_zone}` lists the region's zones that do"
            ) from None
    boot = next((d for d in info.disks if d.boot), None)
    if boot is None:
        raise VmError(f"{vm.instance} has no boot disk")
    disk = boot.source.rsplit("/", 1)[-1]
    started = time.monotonic()
    if info.status not in ("TERMINATED", "STOPPED"):
        print(f"stopping {vm.instance} ({info.status}) so the snapshot is consistent …", flush=True)
        _wait(
            api,
            vm.project,
            vm.zone,
            instances.stop(project=vm.project, zone=vm.zone, instance=vm.instance),
            "stopping the VM",
        )
    name = snapshot_name(disk, datetime.now(UTC))
    print(f"snapshotting disk {disk} as {name} (regional storage in {region}) …", flush=True)
    resource = compute_v1.Snapshot(
        name=name,
        storage_locations=[region],
        description=f"text2img: boot disk {disk} moved from {vm.zone} to {new_zone}",
        labels={"app": "text2img", "purpose": "zone-move"},
    )
    try:
        op = api.disks().create_snapshot(
            project=vm.project, zone=vm.zone, disk=disk, snapshot_resource=resource
        )
    except gexc.GoogleAPICallError as exc:
        raise VmError(f"snapshot of {disk} refused: {exc.message}") from exc
    _wait(api, vm.project, vm.zone, op, f"the snapshot of {disk}")
    snap = api.snapshots().get(project=vm.project, snapshot=name)
    if snap.status != "READY":
        raise VmError(
            f"snapshot {name} is {snap.status}, not READY; check "
            f"`gcloud compute snapshots describe {name}`"
        )
    stored_gb = int(snap.storage_bytes or 0) / 1e9
    minutes = (time.monotonic() - started) / 60
    print(
        f"snapshot {name} is ready: {stored_gb:.1f} GB stored, {minutes:.1f} min; it is "
        "billed per GB-month until you delete it"
    )
    steps = [["config", "set", "zone", new_zone], ["config", "set", "bootDiskSnapshot", name]]
    if args.stack:
        steps = [[*s, "--stack", args.stack] for s in steps]
    if not args.no_config and _pulumi(["version"], check=False) is not None:
        for step in steps:
            _pulumi(step)
        print(
            f"set zone={new_zone} and bootDiskSnapshot={name}; now run `pulumi up`: it "
            f"deletes the VM and the disk in {vm.zone} and creates both in {new_zone} "
            "from the snapshot"
        )
    else:
        commands = " && ".join("pulumi " + " ".join(s) for s in steps)
        print(f"now run: {commands} && pulumi up")
    return 0


# commands on the stack's configuration, not on a running VM
STACK_COMMANDS = {
    "preflight": (cmd_preflight, "check quota, billing, zone, org policies, APIs (seconds)"),
    "move": (cmd_move, "snapshot the boot disk and move the VM to another zone"),
}


def add_stack_commands(sub: Any) -> None:
    """The subparsers of STACK_COMMANDS (`sub`: argparse's subparsers action)."""
    preflight = sub.add_parser("preflight", help=STACK_COMMANDS["preflight"][1])
    preflight.add_argument("--zone", dest="check_zone", help="check this zone instead")
    move = sub.add_parser("move", help=STACK_COMMANDS["move"][1])
    move.add_argument("--zone", dest="to_zone", required=True, help="the new zone")
    move.add_argument(
        "--no-config", action="store_true", help="only print the `pulumi config set` commands"
    )
