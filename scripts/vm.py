"""`scripts/vm`: start, stop and watch the GPU VM.

    scripts/vm status | start [--wait] | stop | wait [--timeout S] | deploy | logs | ssh
    scripts/vm preflight [--zone Z] | move --zone Z

The VM (project, zone, name), the gateway URL, the token and the hourly cost estimate come
from `pulumi stack output --json --show-secrets`, or from flags / environment variables
(`--project`/`TEXT2IMG_VM_PROJECT`, `--zone`, `--instance`, `--url`, `--token-file`).
The Compute API is called with google-cloud-compute (REST) and Application Default
Credentials; `TEXT2IMG_COMPUTE_ENDPOINT` points it at another endpoint (tests).
Every error is one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

# a sibling module: scripts/ is on sys.path when this file runs as a script
from vm_cloudrun import cloudrun_status
from vm_infra import STACK_COMMANDS, add_stack_commands
from vm_target import (
    Target,
    VmError,
    instances_client,
    operations_client,
    pulumi_outputs,
    resolve_target,
)

from text2img import gce as compute
from text2img.gce import ComputeFailure, InstanceInfo, VmRef

# The startup script logs from google-startup-scripts.service at boot and from
# text2img-redeploy.service on a re-run. journalctl ORs several -u (same field) but ANDs
# them with -t (another field), so the units alone, no -t (systemd's sd_journal_add_match).
JOURNAL_UNITS = (
    "google-startup-scripts.service",
    "text2img.service",
    "text2img-autostop.service",
    "text2img-redeploy.service",
    "text2img-metadata-watch.service",
)
DEFAULT_IDLE_MINUTES = 20.0


# -- formatting ----------------------------------------------------------------------------


def human_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min"
    return f"{secs} s"


def _since(moment: datetime | None) -> float | None:
    return None if moment is None else (datetime.now(UTC) - moment).total_seconds()


# -- gateway calls ------------------------------------------------------------------------


def service_get(target: Target, path: str, timeout: float = 10.0) -> httpx.Response:
    if not target.url:
        raise VmError("no gateway URL: pass --url or run `pulumi up` (stack output `url`)")
    headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
    try:
        return httpx.get(target.url + path, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        raise VmError(f"the gateway {target.url} is unreachable: {reason}") from exc


def idle_minutes(info: InstanceInfo) -> float:
    """The autostop limit from the instance metadata (what the VM itself reads)."""
    raw = info.metadata.get("text2img-idle-minutes", "")
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_IDLE_MINUTES
    return value if value > 0 else DEFAULT_IDLE_MINUTES


def service_status(target: Target) -> tuple[dict[str, Any] | None, str]:
    """The service's /v1/status through the gateway: (body, "") or (None, why not)."""
    if not target.url:
        return None, "unknown (no gateway URL; pass --url)"
    try:
        resp = service_get(target, "/v1/status")
    except VmError as exc:
        return None, str(exc)
    if resp.status_code == 401:
        return None, "the gateway refused the token (pass the right one with --token-file)"
    try:
        body = resp.json()
    except ValueError:
        return None, f"unexpected answer from the gateway (HTTP {resp.status_code})"
    if resp.status_code != 200 or not isinstance(body, dict):
        err = body.get("error", {}) if isinstance(body, dict) else {}
        phase = err.get("phase") or err.get("code") or f"HTTP {resp.status_code}"
        return None, f"not ready ({phase}): {err.get('message', '')}".rstrip(": ")
    return body, ""


def autostop_in(body: dict[str, Any], info: InstanceInfo) -> float | None:
    """Seconds until autostop may power the VM off; None while jobs run or are queued."""
    if int(body.get("jobs_in_flight") or 0) + int(body.get("queue_depth") or 0):
        return None
    return max(0.0, idle_minutes(info) * 60 - float(body.get("idle_seconds") or 0.0))


def describe_service(body: dict[str, Any], info: InstanceInfo) -> str:
    """One line about the running service."""
    state = "ready" if body.get("ready") else "loading the model"
    left = autostop_in(body, info)
    if left is None:
        jobs = int(body.get("jobs_in_flight") or 0) + int(body.get("queue_depth") or 0)
        return f"{state}, model {body.get('model')}; busy ({jobs} job(s)), autostop waits"
    idle_s = float(body.get("idle_seconds") or 0.0)
    return (
        f"{state}, model {body.get('model')}; idle {human_duration(idle_s)}, autostop in "
        f"{human_duration(left) if left > 0 else 'under a minute'} "
        f"(after {idle_minutes(info):g} idle min)"
    )


# -- commands --------------------------------------------------------------------------------


def cmd_status(target: Target, args: argparse.Namespace) -> int:
    info = compute.get_instance(instances_client(), target.vm)
    running = info.status == "RUNNING"
    up = _since(info.last_start) if running else None
    down = _since(info.last_stop) if info.status in compute.ASLEEP_STATES else None
    body, why = service_status(target) if running else (None, "")
    so_far = (
        target.hourly_cost * up / 3600 if target.hourly_cost is not None and up is not None
        else None
    )  # fmt: skip
    if args.json:
        report = {
            "instance": info.name, "project": target.vm.project, "zone": target.vm.zone,
            "status": info.status, "uptime_seconds": up, "asleep_seconds": down,
            "machine_type": info.machine_type, "gpus": list(info.gpus), "spot": info.spot,
            "hourly_cost_estimate": target.hourly_cost, "cost_this_run_estimate": so_far,
            "idle_minutes_limit": idle_minutes(info), "service": body,
            "service_error": why or None,
            "autostop_in_seconds": autostop_in(body, info) if body else None,
            "url": target.url,
        }  # fmt: skip
        print(json.dumps(report, indent=2))
        return 0
    if running:
        state = f"RUNNING (up {human_duration(up)})" if up is not None else "RUNNING"
    elif info.status in compute.ASLEEP_STATES:
        state = f"{info.status} (asleep"
        state += f" for {human_duration(down)})" if down is not None else ")"
    else:
        state = info.status
    gpus = " + ".join(info.gpus) if info.gpus else "no GPU"
    lines = [
        ("backend", "vm (one GCE VM that the gateway wakes; docs/backends.md)"),
        ("instance", f"{info.name} (project {target.vm.project}, zone {target.vm.zone})"),
        ("state", state),
        ("machine", f"{info.machine_type}, {gpus}"),
        ("spot", "yes (cheaper; Google may stop it at any time)" if info.spot else "no"),
    ]
    if target.hourly_cost is not None:
        cost = f"~${target.hourly_cost:.2f}/hour while running (estimate)"
        if so_far is not None:
            cost += f"; this run so far ~${so_far:.2f}"
        if not running:
            cost += "; now only the disk is billed"
        lines.append(("cost", cost))
    if running:
        lines.append(("service", describe_service(body, info) if body else why))
    elif info.status in compute.ASLEEP_STATES:
        lines.append(("service", "asleep; the next request wakes it (or `scripts/vm start`)"))
    if target.url:
        lines.append(("url", target.url))
    for key, value in lines:
        print(f"{key:<9} {value}")
    return 0


def wait_operation(vm: VmRef, name: str, timeout_s: float, what: str) -> None:
    ops = operations_client()
    deadline = time.monotonic() + timeout_s
    while True:
        op = compute.get_operation(ops, vm, name)
        if op.done:
            if op.error_code:
                raise compute.failure_from_code(op.error_code, op.error_message or "", vm)
            return
        if time.monotonic() > deadline:
            raise VmError(f"{what} did not finish within {timeout_s:.0f} s (operation {name})")
        time.sleep(2.0)


def cmd_start(target: Target, args: argparse.Namespace) -> int:
    client = instances_client()
    info = compute.get_instance(client, target.vm)
    if info.status == "RUNNING":
        print(f"{info.name} is already running")
    elif info.status in compute.GOING_DOWN_STATES:
        raise VmError(f"{info.name} is {info.status}; run this again once it has stopped")
    else:
        resume = info.status in compute.SUSPENDED_STATES
        op = compute.start_instance(client, target.vm, resume=resume)
        print(f"starting {info.name} …", flush=True)
        wait_operation(target.vm, op, args.timeout, "the start")
        print(f"{info.name} is running; the service needs about 1-3 more minutes to load")
    if args.wait:
        return cmd_wait(target, args)
    print("run `scripts/vm wait` to wait until it answers")
    return 0


def cmd_stop(target: Target, args: argparse.Namespace) -> int:
    client = instances_client()
    info = compute.get_instance(client, target.vm)
    if info.status in compute.ASLEEP_STATES:
        print(f"{info.name} is already stopped ({info.status})")
        return 0
    op = compute.stop_instance(client, target.vm)
    print(f"stopping {info.name} …", flush=True)
    wait_operation(target.vm, op, args.timeout, "the stop")
    print(f"{info.name} is stopped; the GPU is no longer billed")
    return 0


def cmd_wait(target: Target, args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    last = ""
    print(f"waiting for {target.url} to answer ready (up to {args.timeout:.0f} s)", flush=True)
    while True:
        try:
            # not /readyz: Cloud Run reserves some paths ending in "z"
            resp = service_get(target, "/v1/ready", timeout=15.0)
            note, pause = _ready_note(resp)
        except VmError as exc:
            note, pause = str(exc), 5.0
        if note == "ready":
            print(f"ready: {target.url}")
            return 0
        if note.startswith(("asleep", "refused", "start failed")):
            raise VmError(note)
        if note != last:
            print(f"  {note}", flush=True)
            last = note
        if time.monotonic() + pause > deadline:
            raise VmError(f"not ready after {args.timeout:.0f} s (last: {note})")
        time.sleep(pause)


def _ready_note(resp: httpx.Response) -> tuple[str, float]:
    """("ready" | a progress note, seconds until the next poll)."""
    if resp.status_code == 200:
        return "ready", 0.0
    if resp.status_code == 401:
        return "refused: the gateway rejected the token (check --token-file)", 0.0
    try:
        body = resp.json()
    except ValueError:
        return f"HTTP {resp.status_code} from the gateway", 5.0
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        phase = body.get("phase", "loading_model") if isinstance(body, dict) else "?"
        return f"{phase} …", 3.0
    pause = float(resp.headers.get("retry-after") or err.get("retry_after") or 5)
    if err.get("code") == "asleep":
        return "asleep: the VM is stopped; run `scripts/vm start --wait`", pause
    if err.get("code") == "start_failed":
        return f"start failed ({err.get('cause')}): {err.get('message')}", pause
    eta = err.get("eta_seconds")
    suffix = f", about {eta} s to go" if eta is not None else ""
    return f"{err.get('phase', err.get('code'))}{suffix} …", min(pause, 10.0)


def gcloud_ssh(vm: VmRef, extra: Sequence[str]) -> list[str]:
    exe = shutil.which("gcloud")
    if exe is None:
        raise VmError(
            "gcloud is not installed; install the Google Cloud CLI "
            "(https://cloud.google.com/sdk/docs/install) to use ssh, deploy and logs --journal"
        )
    return [
        exe, "compute", "ssh", vm.instance, "--zone", vm.zone, "--project", vm.project,
        "--tunnel-through-iap", *extra,
    ]  # fmt: skip


def _require_running(vm: VmRef, why: str) -> None:
    info = compute.get_instance(instances_client(), vm)
    if info.status != "RUNNING":
        raise VmError(f"{vm.instance} is {info.status}; {why}")


def cmd_deploy(target: Target, args: argparse.Namespace) -> int:
    _require_running(target.vm, "start it first (`scripts/vm start`): every boot deploys anyway")
    cmd = gcloud_ssh(target.vm, ["--command", "sudo google_metadata_script_runner startup"])
    print("re-running the startup script (pulls the image pinned in the metadata) …", flush=True)
    code = subprocess.run(cmd, check=False).returncode
    if code != 0:
        raise VmError(f"the startup script failed on the VM (exit {code}); see `scripts/vm logs`")
    print("deployed; `scripts/vm wait` waits until the service is ready again")
    return 0


def journal_command(lines: int, *, follow: bool) -> list[str]:
    """journalctl for the startup script, the service, autostop and roll-outs together."""
    command = ["journalctl", "--no-pager", "-n", str(lines)]
    command += [arg for unit in JOURNAL_UNITS for arg in ("-u", unit)]
    return [*command, "-f"] if follow else command


def cmd_logs(target: Target, args: argparse.Namespace) -> int:
    if args.journal:
        _require_running(target.vm, "the journal is only readable while it runs")
        journal = shlex.join(["sudo", *journal_command(args.lines, follow=args.follow)])
        return subprocess.run(gcloud_ssh(target.vm, ["--command", journal]), check=False).returncode
    client = instances_client()
    text, offset = compute.serial_output(client, target.vm)
    tail = text.splitlines()[-args.lines :] if not args.follow else text.splitlines()
    for line in tail:
        print(line)
    while args.follow:
        time.sleep(2.0)
        text, offset = compute.serial_output(client, target.vm, start=offset)
        if text:
            print(text, end="" if text.endswith("\n") else "\n", flush=True)
    return 0


def cmd_ssh(target: Target, args: argparse.Namespace) -> int:
    extra = list(args.ssh_args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    cmd = gcloud_ssh(target.vm, ["--", *extra] if extra else [])
    sys.stdout.flush()
    os.execv(cmd[0], cmd)  # noqa: S606 (replace this process: the terminal goes to ssh)


COMMANDS: dict[str, tuple[Callable[[Target, argparse.Namespace], int], str, bool]] = {
    # name: (function, help, needs the gateway URL and token)
    "status": (cmd_status, "state, uptime, idle time, autostop, cost", True),
    "start": (cmd_start, "start the VM (with --wait: until the service is ready)", False),
    "stop": (cmd_stop, "stop the VM now (the GPU is no longer billed)", False),
    "wait": (cmd_wait, "wait until the endpoint answers ready, showing progress", True),
    "deploy": (cmd_deploy, "roll out the current image without a reboot", False),
    "logs": (cmd_logs, "serial console output (or the journal with --journal)", False),
    "ssh": (cmd_ssh, "open a shell on the VM through IAP", False),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scripts/vm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", help="Pulumi stack to read outputs from (default: selected)")
    parser.add_argument("--project", help="Google Cloud project (default: stack output)")
    parser.add_argument("--zone", help="the VM's zone (default: stack output)")
    parser.add_argument("--instance", help="the VM's name (default: stack output)")
    parser.add_argument("--url", help="the gateway URL (default: stack output `url`)")
    parser.add_argument("--token-file", help="file holding the API token (default: stack)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text, _) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if name == "status":
            cmd.add_argument("--json", action="store_true", help="machine-readable output")
        if name in ("start", "stop", "wait"):
            cmd.add_argument("--timeout", type=float, default=600.0, help="seconds (600)")
        if name == "start":
            cmd.add_argument("--wait", action="store_true", help="then wait until ready")
        if name == "logs":
            cmd.add_argument("--journal", action="store_true", help="journal over IAP SSH")
            cmd.add_argument("-f", "--follow", action="store_true", help="keep printing")
            cmd.add_argument("-n", "--lines", type=int, default=200, help="lines (200)")
        if name == "ssh":
            cmd.add_argument("ssh_args", nargs=argparse.REMAINDER, help="-- ssh arguments")
    add_stack_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in STACK_COMMANDS:
        try:
            return STACK_COMMANDS[args.command][0](args)
        except (VmError, ComputeFailure) as exc:
            print(f"scripts/vm {args.command}: error: {exc}", file=sys.stderr)
            return 1
    named = (args.project, args.zone, args.instance, os.environ.get("TEXT2IMG_VM_INSTANCE"))
    if args.command == "status" and not any(named):  # the stack says which backend
        try:
            outputs = pulumi_outputs(args.stack)
        except VmError as exc:
            print(f"scripts/vm status: error: {exc}", file=sys.stderr)
            return 1
        if outputs.get("backend") == "cloudrun":
            return cloudrun_status(outputs, as_json=args.json)
    func, _, needs_endpoint = COMMANDS[args.command]
    args.needs_endpoint = needs_endpoint or getattr(args, "wait", False) is True
    try:
        target = resolve_target(args)
        if args.command == "wait" and not target.url:
            raise VmError("no gateway URL: pass --url or run `pulumi up` (stack output `url`)")
        return func(target, args)
    except (VmError, ComputeFailure) as exc:
        print(f"scripts/vm {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
