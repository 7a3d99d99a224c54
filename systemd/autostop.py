#!/usr/bin/env python3
"""text2img autostop: power this VM off when the service has been idle long enough.

Run once a minute by text2img-autostop.timer. Python 3.10+ standard library only.
Idle = no request finished or in flight for TEXT2IMG_AUTOSTOP_IDLE_MINUTES, counted
from the later of boot and the last request (GET /v1/status on the local service).
Never while a job runs or is queued. Also powers off when the service has not become
ready within TEXT2IMG_AUTOSTOP_BOOT_GRACE_MINUTES of boot (a broken VM must not keep
billing). Paused while the pause file exists. Settings (environment, all optional):

  TEXT2IMG_AUTOSTOP_IDLE_MINUTES        20
  TEXT2IMG_AUTOSTOP_BOOT_GRACE_MINUTES  30
  TEXT2IMG_AUTOSTOP_STATUS_URL          http://127.0.0.1:8080/v1/status
  TEXT2IMG_AUTOSTOP_TOKEN_FILE          /etc/text2img/service.env (TEXT2IMG_API_TOKEN=...)
  TEXT2IMG_AUTOSTOP_PAUSE_FILE          /etc/text2img/autostop.paused
  TEXT2IMG_AUTOSTOP_STATE_FILE          /run/text2img/autostop.json
  TEXT2IMG_AUTOSTOP_UPTIME_FILE         /proc/uptime
  TEXT2IMG_AUTOSTOP_POWEROFF_COMMAND    systemctl poweroff
  TEXT2IMG_AUTOSTOP_NOW                 unix time to use instead of the clock (tests)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# After a successful poweroff request, wait this long before asking again.
POWEROFF_RETRY_SECONDS = 300.0
# The longest block the service's wrong-token throttle gives one client (auth.py's
# FailureThrottle max_block_s): a 429 to autostop lasts at most this long, then it sees again.
THROTTLE_MAX_BLOCK_MINUTES = 60.0
HTTP_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Config:
    idle_minutes: float = 20.0
    boot_grace_minutes: float = 30.0


@dataclass(frozen=True)
class Status:
    """The fields of the service's GET /v1/status that autostop uses."""

    ready: bool
    idle_seconds: float
    jobs_in_flight: int
    queue_depth: int


@dataclass(frozen=True)
class Observation:
    now: float  # unix time
    uptime: float  # seconds since boot
    status: Status | None  # None: the service did not answer with a valid status
    paused: bool = False
    # the service answered 429: something on this VM sent wrong tokens from the address
    # autostop uses too, so the service refuses it for a while. Up, but its jobs are unseen.
    throttled: bool = False


@dataclass(frozen=True)
class State:
    """What autostop remembers between runs (kept under /run: reset by every boot)."""

    boot_at: float = 0.0
    ever_ready: bool = False
    last_active_at: float = 0.0  # latest moment a request was known to run or finish
    lost_at: float | None = None  # when the service stopped answering after being ready
    poweroff_at: float | None = None  # when autostop last asked for a poweroff
    paused_at: float | None = None  # when autostop last saw the pause file


@dataclass(frozen=True)
class Decision:
    state: str  # busy | idle | booting | never-ready | down | throttled | paused | powering-off
    idle_minutes: float  # minutes counted against the limit
    limit_minutes: float
    poweroff: bool
    reason: str

    def log_line(self) -> str:
        action = "poweroff" if self.poweroff else "wait"
        return (
            f"state={self.state} idle={self.idle_minutes:.1f}min "
            f"limit={self.limit_minutes:g}min action={action}: {self.reason}"
        )


def decide(obs: Observation, prev: State, cfg: Config) -> tuple[Decision, State]:
    """Pure decision: what to do now, and the state to remember."""
    boot_at = obs.now - obs.uptime
    if abs(prev.boot_at - boot_at) > 60:  # a new boot: forget the last one
        prev = State(boot_at=boot_at, last_active_at=boot_at)
    state = prev
    idle_limit = cfg.idle_minutes
    grace = cfg.boot_grace_minutes
    status = obs.status

    if obs.paused:  # a pause counts as activity: the clocks restart when it ends
        state = dataclasses.replace(state, paused_at=obs.now, last_active_at=obs.now)
        return Decision("paused", 0.0, idle_limit, False, "pause file present"), state
    if state.poweroff_at is not None and obs.now - state.poweroff_at < POWEROFF_RETRY_SECONDS:
        minutes = (obs.now - state.poweroff_at) / 60
        return Decision(
            "powering-off", minutes, idle_limit, False, "poweroff already requested"
        ), state

    if status is not None and (status.jobs_in_flight > 0 or status.queue_depth > 0):
        state = dataclasses.replace(
            state, ever_ready=state.ever_ready or status.ready, last_active_at=obs.now, lost_at=None
        )
        reason = f"{status.jobs_in_flight} job(s) running, {status.queue_depth} queued"
        return Decision("busy", 0.0, idle_limit, False, reason), state

    if status is not None and status.ready:
        active = max(state.last_active_at, boot_at, obs.now - max(status.idle_seconds, 0.0))
        state = dataclasses.replace(state, ever_ready=True, last_active_at=active, lost_at=None)
        idle = (obs.now - active) / 60
        if idle >= idle_limit:
            reason = "no request for the idle limit"
            return Decision("idle", idle, idle_limit, True, reason), state
        return Decision("idle", idle, idle_limit, False, "idle below the limit"), state

    if status is None and obs.throttled:
        # Alive but refusing us: a job may be running that we cannot see, so this is not a
        # loss. Idle counts from the last activity seen, over the usual limit (the boot
        # grace if it was never seen ready) plus the longest block; a throttle renewed for
        # longer than that still ends in a poweroff.
        state = dataclasses.replace(state, lost_at=None)
        limit = (idle_limit if state.ever_ready else grace) + THROTTLE_MAX_BLOCK_MINUTES
        idle = (obs.now - max(state.last_active_at, boot_at)) / 60
        reason = "the service refuses this VM's requests after wrong tokens; status unseen"
        return Decision("throttled", idle, limit, idle >= limit, reason), state

    what = "not ready" if status is not None else "not answering"
    if not state.ever_ready:
        since_boot = (obs.now - max(boot_at, state.paused_at or boot_at)) / 60
        if since_boot >= grace:
            reason = f"service {what} {grace:g} min after boot (see journalctl -t text2img-startup)"
            return Decision("never-ready", since_boot, grace, True, reason), state
        return Decision("booting", since_boot, grace, False, f"service {what} yet"), state

    # It was ready and is not now: crashed, restarting, or a new image is loading. No
    # request can run, so idle counts from the later of the last request and the loss.
    lost_at = state.lost_at if state.lost_at is not None else obs.now
    state = dataclasses.replace(state, lost_at=lost_at)
    limit = min(idle_limit, grace)
    idle = (obs.now - max(state.last_active_at, lost_at)) / 60
    if idle >= limit:
        reason = f"service {what} since it was last ready, no request since"
        return Decision("down", idle, limit, True, reason), state
    return Decision("down", idle, limit, False, f"service {what}; waiting for it"), state


# ---- the program around decide() --------------------------------------------------


def read_token(path: Path) -> str | None:
    """The bearer token from an env file line TEXT2IMG_API_TOKEN=..., if any."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key.strip() == "TEXT2IMG_API_TOKEN" and value.strip():
            return value.strip()
    return None


def fetch_status(url: str, token: str | None) -> tuple[Status | None, str, bool]:
    """GET the service status: (status, "ok", False), or (None, why, throttled) when it
    does not answer with a valid one; throttled: it answered 429 (alive, refusing us)."""
    if not url.startswith(("http://", "https://")):
        return None, f"status URL {url!r} is not http(s)", False
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as response:  # noqa: S310
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        wait = exc.headers.get("Retry-After") if exc.headers else None
        after = f" (retry after {wait} s)" if exc.code == 429 and wait else ""
        return None, f"HTTP {exc.code} from {url}{after}", exc.code == 429
    except (OSError, ValueError) as exc:
        return None, f"{type(exc).__name__} from {url}: {exc}", False
    try:
        status = Status(
            ready=bool(body["ready"]),
            idle_seconds=float(body["idle_seconds"]),
            jobs_in_flight=int(body["jobs_in_flight"]),
            queue_depth=int(body["queue_depth"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        return None, f"unexpected status body from {url}: missing or bad {exc}", False
    return status, "ok", False


def pause_state(path: Path, *, now: float, boot_at: float) -> tuple[bool, str]:
    """(paused, note). The pause file holds for this boot only; a number in it is the
    number of minutes the pause lasts from when the file was written."""
    try:
        written = path.stat().st_mtime
        text = path.read_text().strip()
    except FileNotFoundError:
        return False, ""
    except OSError as exc:
        return True, f"paused ({path} unreadable: {exc})"
    if written < boot_at:
        return False, f"ignoring {path}: written before this boot (remove it)"
    if not text:
        return True, "paused until the file is removed or the VM reboots"
    try:
        minutes = float(text)
    except ValueError:
        return True, f"paused ({text[:20]!r} is not a number of minutes: paused until removed)"
    left = written + minutes * 60 - now
    if left <= 0:
        return False, f"the pause in {path} ended {-left / 60:.0f} min ago (remove the file)"
    return True, f"paused for {left / 60:.0f} more min"


def load_state(path: Path) -> State:
    try:
        data = json.loads(path.read_text())
        fields = {f.name for f in dataclasses.fields(State)}
        return State(**{k: v for k, v in data.items() if k in fields})
    except (OSError, ValueError, TypeError):
        return State()


def save_state(path: Path, state: State) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(state)))
    tmp.replace(path)


def minutes_setting(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        log(f"warning: {name}={raw!r} is not a positive number of minutes; using {default:g}")
        return default
    return value


def log(message: str) -> None:
    print(f"text2img-autostop: {message}", flush=True)


def main() -> int:
    env = os.environ.get
    cfg = Config(
        idle_minutes=minutes_setting("TEXT2IMG_AUTOSTOP_IDLE_MINUTES", 20.0),
        boot_grace_minutes=minutes_setting("TEXT2IMG_AUTOSTOP_BOOT_GRACE_MINUTES", 30.0),
    )
    url = env("TEXT2IMG_AUTOSTOP_STATUS_URL") or "http://127.0.0.1:8080/v1/status"
    token_file = Path(env("TEXT2IMG_AUTOSTOP_TOKEN_FILE") or "/etc/text2img/service.env")
    pause_file = Path(env("TEXT2IMG_AUTOSTOP_PAUSE_FILE") or "/etc/text2img/autostop.paused")
    state_file = Path(env("TEXT2IMG_AUTOSTOP_STATE_FILE") or "/run/text2img/autostop.json")
    uptime_file = Path(env("TEXT2IMG_AUTOSTOP_UPTIME_FILE") or "/proc/uptime")
    poweroff = shlex.split(env("TEXT2IMG_AUTOSTOP_POWEROFF_COMMAND") or "systemctl poweroff")
    now = float(env("TEXT2IMG_AUTOSTOP_NOW") or time.time())
    try:
        uptime = float(uptime_file.read_text().split()[0])
    except (OSError, ValueError, IndexError) as exc:
        log(f"error: cannot read uptime from {uptime_file}: {exc}; doing nothing")
        return 1

    paused, pause_note = pause_state(pause_file, now=now, boot_at=now - uptime)
    if pause_note and not paused:
        log(pause_note)
    status, why, throttled = (
        (None, "paused", False) if paused else fetch_status(url, read_token(token_file))
    )
    obs = Observation(now=now, uptime=uptime, status=status, paused=paused, throttled=throttled)
    decision, state = decide(obs, load_state(state_file), cfg)
    detail = "" if status is not None or paused else f" [{why}]"
    if paused:
        detail = f" [{pause_note}; remove {pause_file} to re-arm autostop]"
    log(decision.log_line() + detail)
    if decision.poweroff:
        log(f"powering off: {shlex.join(poweroff)}")
        result = subprocess.run(poweroff, check=False)
        if result.returncode == 0:
            state = dataclasses.replace(state, poweroff_at=now)
        else:
            log(f"error: {shlex.join(poweroff)} exited {result.returncode}; retrying next run")
    save_state(state_file, state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
