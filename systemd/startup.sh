#!/bin/bash
# text2img VM startup script. Compute Engine runs it as root on EVERY boot (instance
# metadata "startup-script", set verbatim by infra/); `sudo google_metadata_script_runner
# startup` re-runs it, and text2img-metadata-watch does so when the metadata changes.
#
# It is self-contained and idempotent: it writes the systemd units, env files and the
# small Python programs it needs (embedded below), and (re)starts only what changed.
# Steps: arm autostop -> read metadata -> wait for the NVIDIA driver -> Docker + NVIDIA
# container toolkit -> pull the image by digest -> API token from Secret Manager ->
# model weights -> env files + text2img.service -> start. A failing step is named in
# the log (journalctl -t text2img-startup); autostop is armed first, so a broken VM
# still powers itself off after the boot grace period.
#
# Test/override knobs (environment; the VM uses the defaults):
#   TEXT2IMG_ROOT                     prefix for every path written (default: none)
#   GCE_METADATA_HOST                 metadata server host[:port] (metadata.google.internal)
#   TEXT2IMG_SECRETMANAGER_ENDPOINT   https://secretmanager.googleapis.com
#   TEXT2IMG_NVIDIA_REPO              https://nvidia.github.io/libnvidia-container
#   TEXT2IMG_DRIVER_TIMEOUT / _POLL   seconds to wait for nvidia-smi (600) / between tries (5)
#   TEXT2IMG_NET_TIMEOUT              seconds one network step may keep retrying (900)
#   TEXT2IMG_RETRY_ATTEMPTS / _DELAY  attempts per network step (8) / first back-off (2 s)
#   TEXT2IMG_LOCK_TIMEOUT             seconds to wait for a concurrent run to finish (7200)
set -Eeuo pipefail
umask 077
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

ROOT="${TEXT2IMG_ROOT:-}"
METADATA_HOST="${GCE_METADATA_HOST:-metadata.google.internal}"
SECRETMANAGER="${TEXT2IMG_SECRETMANAGER_ENDPOINT:-https://secretmanager.googleapis.com}"
NVIDIA_REPO="${TEXT2IMG_NVIDIA_REPO:-https://nvidia.github.io/libnvidia-container}"
DRIVER_TIMEOUT="${TEXT2IMG_DRIVER_TIMEOUT:-600}"
DRIVER_POLL="${TEXT2IMG_DRIVER_POLL:-5}"
NET_TIMEOUT="${TEXT2IMG_NET_TIMEOUT:-900}"
RETRY_ATTEMPTS="${TEXT2IMG_RETRY_ATTEMPTS:-8}"
RETRY_DELAY="${TEXT2IMG_RETRY_DELAY:-2}"
LOCK_TIMEOUT="${TEXT2IMG_LOCK_TIMEOUT:-7200}"

ETC="$ROOT/etc/text2img"
UNITS="$ROOT/etc/systemd/system"
LIB="$ROOT/usr/local/lib/text2img"
STATE="$ROOT/var/lib/text2img"
RUN="$ROOT/run/text2img"
DOCKER_DAEMON_JSON="$ROOT/etc/docker/daemon.json"
TAG=text2img-startup
STEP=begin
WORK=

# ---- logging, errors, retries ---------------------------------------------------------

log() {
  printf '%s %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$TAG" "$*" >&2
  logger -t "$TAG" -- "$*" 2>/dev/null || true
}

step() {
  STEP=$1
  log "step $STEP: $2"
}

armed_note() {
  log "autostop stays armed: the VM powers itself off if the service is not ready within the boot grace period. Fix the cause, then re-run: sudo google_metadata_script_runner startup"
}

die() {
  trap - ERR
  log "FAILED in step '$STEP': $*"
  armed_note
  exit 1
}

on_error() {
  local rc=$? line=$1
  if [[ $BASHPID != "$$" ]]; then exit "$rc"; fi # a subshell: the parent reports it
  trap - ERR
  log "FAILED in step '$STEP' (exit $rc at line $line)"
  armed_note
  exit "$rc"
}
trap 'on_error $LINENO' ERR

cleanup() {
  if [[ -n $WORK ]]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

# retry DESCRIPTION COMMAND...: run COMMAND until it succeeds, with exponential back-off,
# at most RETRY_ATTEMPTS times and not beyond NET_TIMEOUT seconds in total.
retry() {
  local desc=$1 attempt=1 delay=$RETRY_DELAY deadline=$((SECONDS + NET_TIMEOUT))
  shift
  until "$@"; do
    if ((attempt >= RETRY_ATTEMPTS || SECONDS + delay > deadline)); then
      log "$desc: giving up after $attempt attempt(s) in $((SECONDS + NET_TIMEOUT - deadline))s"
      return 1
    fi
    log "$desc: attempt $attempt failed; retrying in ${delay}s"
    sleep "$delay"
    attempt=$((attempt + 1))
    delay=$((delay * 2))
    if ((delay > 60)); then delay=60; fi
  done
}

# put_file MODE PATH < CONTENT: write PATH atomically when its content or mode differs.
# Sets CHANGED=1 when it wrote, 0 when the file was already right.
CHANGED=0
put_file() {
  local mode=$1 dest=$2 tmp
  mkdir -p "$(dirname "$dest")"
  tmp=$(mktemp "$dest.XXXXXX")
  cat >"$tmp"
  chmod "$mode" "$tmp"
  if [[ -f $dest ]] && cmp -s "$tmp" "$dest" && [[ $(stat -c %a "$dest") == "${mode#0}" ]]; then
    rm -f "$tmp"
    CHANGED=0
    return 0
  fi
  if ((EUID == 0)); then chown 0:0 "$tmp"; fi
  mv -f "$tmp" "$dest"
  CHANGED=1
  log "wrote ${dest#"$ROOT"} (mode $mode)"
}

# ---- systemd helpers -------------------------------------------------------------------

ensure_enabled() {
  if ! systemctl is-enabled --quiet "$1" 2>/dev/null; then systemctl enable "$1"; fi
}

# ensure_running UNIT CHANGED: restart when its definition changed, else start if stopped.
ensure_running() {
  local unit=$1 changed=$2
  if ((changed)); then
    log "restarting $unit (its configuration changed)"
    systemctl reset-failed "$unit" 2>/dev/null || true
    systemctl restart "$unit"
  elif ! systemctl is-active --quiet "$unit"; then
    log "starting $unit"
    systemctl reset-failed "$unit" 2>/dev/null || true
    systemctl start "$unit"
  else
    log "$unit unchanged and running"
  fi
}

# ---- metadata server -------------------------------------------------------------------

# md_fetch PATH OUT: GET a metadata path into OUT; prints the HTTP status (000: no answer).
md_fetch() {
  curl -sS -o "$2" -w '%{http_code}' --max-time 10 -H 'Metadata-Flavor: Google' \
    "http://$METADATA_HOST/computeMetadata/v1/$1" 2>>"$WORK/curl.log" || true
}

# md_try PATH DEFAULT: one attempt; REPLY = value (DEFAULT on 404). Fails on other answers.
md_try() {
  local code
  code=$(md_fetch "$1" "$WORK/md")
  case $code in
    200) REPLY=$(<"$WORK/md") ;;
    404) REPLY=$2 ;;
    *)
      log "metadata $1: HTTP $code"
      return 1
      ;;
  esac
}

# md PATH DEFAULT: like md_try, with retries.
md() {
  retry "metadata $1" md_try "$1" "$2"
}

# access_token: ACCESS_TOKEN = the VM service account's OAuth token (one attempt).
access_token() {
  local path=instance/service-accounts/default/token
  md_try "$path" "" || return 1
  if ! ACCESS_TOKEN=$(printf '%s' "$REPLY" | python3 -c '
import json, sys
try:
    print(json.load(sys.stdin)["access_token"])
except (ValueError, KeyError, TypeError):
    sys.exit("the metadata server returned no access_token")
'); then
    return 1
  fi
  [[ -n $ACCESS_TOKEN ]]
}

# ---- the embedded files ----------------------------------------------------------------

write_autostop_files() {
  AUTOSTOP_CHANGED=0
  put_file 0755 "$LIB/autostop.py" <<'__TEXT2IMG_AUTOSTOP_PY__'
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
    state: str  # busy | idle | booting | never-ready | down | paused | powering-off
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


def fetch_status(url: str, token: str | None) -> tuple[Status | None, str]:
    """GET the service status; (None, why) when it does not answer with a valid one."""
    if not url.startswith(("http://", "https://")):
        return None, f"status URL {url!r} is not http(s)"
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as response:  # noqa: S310
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return None, f"HTTP {exc.code} from {url}"
    except (OSError, ValueError) as exc:
        return None, f"{type(exc).__name__} from {url}: {exc}"
    try:
        status = Status(
            ready=bool(body["ready"]),
            idle_seconds=float(body["idle_seconds"]),
            jobs_in_flight=int(body["jobs_in_flight"]),
            queue_depth=int(body["queue_depth"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        return None, f"unexpected status body from {url}: missing or bad {exc}"
    return status, "ok"


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
    status, why = (None, "paused") if paused else fetch_status(url, read_token(token_file))
    obs = Observation(now=now, uptime=uptime, status=status, paused=paused)
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
__TEXT2IMG_AUTOSTOP_PY__

  put_file 0644 "$UNITS/text2img-autostop.service" <<'__UNIT__'
[Unit]
Description=text2img autostop: power the VM off when idle or never ready
Documentation=file:/usr/local/lib/text2img/autostop.py

[Service]
Type=oneshot
EnvironmentFile=-/etc/text2img/autostop.env
ExecStart=/usr/bin/python3 /usr/local/lib/text2img/autostop.py
# a hung run must not stall the timer (and with it every later decision)
TimeoutStartSec=2min
SyslogIdentifier=text2img-autostop
__UNIT__
  AUTOSTOP_CHANGED=$((AUTOSTOP_CHANGED | CHANGED))

  put_file 0644 "$UNITS/text2img-autostop.timer" <<'__UNIT__'
[Unit]
Description=text2img autostop: check every minute whether the VM is idle

[Timer]
OnBootSec=1min
OnUnitInactiveSec=1min
AccuracySec=5s

[Install]
WantedBy=timers.target
__UNIT__
  AUTOSTOP_CHANGED=$((AUTOSTOP_CHANGED | CHANGED))
}

write_watch_files() {
  WATCH_CHANGED=0
  put_file 0755 "$LIB/metadata_watch.py" <<'__TEXT2IMG_WATCH_PY__'
#!/usr/bin/env python3
"""text2img metadata watcher: roll out a new image (or settings) without a reboot.

Long-polls this VM's metadata attributes (?wait_for_change=true with the last ETag)
and, when `startup-script` or any `text2img-*` attribute changes (for example after
`pulumi up` pushed a new image digest), starts text2img-redeploy.service, which re-runs
the startup script. Python 3.10+ standard library only. Settings (environment):

  GCE_METADATA_HOST            metadata.google.internal
  TEXT2IMG_WATCH_COMMAND       systemctl start text2img-redeploy.service
  TEXT2IMG_WATCH_TIMEOUT_SEC   300 (seconds one long poll may wait)
  TEXT2IMG_WATCH_MAX_BACKOFF   60 (seconds between retries when the server fails)
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request


def log(message: str) -> None:
    print(f"text2img-metadata-watch: {message}", flush=True)


def watched(attributes: dict[str, str]) -> dict[str, str]:
    """The attributes whose change means "re-run the startup script"."""
    return {
        k: v for k, v in attributes.items() if k == "startup-script" or k.startswith("text2img-")
    }


def fingerprint(attributes: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(watched(attributes), sort_keys=True).encode()).hexdigest()


def changed_keys(old: dict[str, str], new: dict[str, str]) -> list[str]:
    a, b = watched(old), watched(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def get_attributes(host: str, etag: str | None, timeout_sec: int) -> tuple[dict[str, str], str]:
    """The instance attributes and their ETag; waits for a change when etag is given."""
    url = f"http://{host}/computeMetadata/v1/instance/attributes/?recursive=true"
    if etag:
        url += f"&wait_for_change=true&last_etag={etag}&timeout_sec={timeout_sec}"
    request = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout_sec + 15) as response:  # noqa: S310
        body = json.loads(response.read() or b"{}")
        new_etag = response.headers.get("ETag") or ""
    if not isinstance(body, dict):
        raise ValueError("attributes are not a JSON object")
    return {str(k): str(v) for k, v in body.items()}, new_etag


def main() -> int:
    host = os.environ.get("GCE_METADATA_HOST") or "metadata.google.internal"
    command = shlex.split(
        os.environ.get("TEXT2IMG_WATCH_COMMAND") or "systemctl start text2img-redeploy.service"
    )
    timeout_sec = int(os.environ.get("TEXT2IMG_WATCH_TIMEOUT_SEC") or 300)
    max_backoff = float(os.environ.get("TEXT2IMG_WATCH_MAX_BACKOFF") or 60)
    current: dict[str, str] | None = None
    etag: str | None = None
    backoff = 1.0
    log(f"watching http://{host}/computeMetadata/v1/instance/attributes/ for changes")
    while True:
        try:
            attributes, new_etag = get_attributes(host, etag, timeout_sec)
        except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
            log(f"metadata server: {type(exc).__name__}: {exc}; retrying in {backoff:g}s")
            time.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)
            etag = None  # start over with a plain read: the ETag may be stale
            continue
        backoff = 1.0
        etag = new_etag or None
        if current is not None and fingerprint(attributes) != fingerprint(current):
            keys = ", ".join(changed_keys(current, attributes))
            image = attributes.get("text2img-image", "(unset)")
            log(f"changed: {keys} (image {image}); re-running the startup script")
            result = subprocess.run(command, check=False)
            if result.returncode != 0:
                log(
                    f"error: {shlex.join(command)} exited {result.returncode}; "
                    "see journalctl -t text2img-startup"
                )
            else:
                log("startup script finished")
        current = attributes
        if not etag:  # a server without ETags: do not spin
            time.sleep(min(timeout_sec, max_backoff))


if __name__ == "__main__":
    sys.exit(main())
__TEXT2IMG_WATCH_PY__
  WATCH_CHANGED=$((WATCH_CHANGED | CHANGED))

  put_file 0644 "$UNITS/text2img-metadata-watch.service" <<'__UNIT__'
[Unit]
Description=text2img: re-run the startup script when the instance metadata changes
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/python3 /usr/local/lib/text2img/metadata_watch.py
Restart=always
RestartSec=30
SyslogIdentifier=text2img-metadata-watch

[Install]
WantedBy=multi-user.target
__UNIT__
  WATCH_CHANGED=$((WATCH_CHANGED | CHANGED))

  put_file 0644 "$UNITS/text2img-redeploy.service" <<'__UNIT__'
[Unit]
Description=text2img: re-run the startup script (started by text2img-metadata-watch)

[Service]
Type=oneshot
ExecStart=/usr/bin/google_metadata_script_runner startup
TimeoutStartSec=2h
__UNIT__
  WATCH_CHANGED=$((WATCH_CHANGED | CHANGED))
}

write_service_unit() {
  put_file 0644 "$UNITS/text2img.service" <<'__UNIT__'
[Unit]
Description=text2img: the GLIDE text-to-image service (Docker container)
Wants=network-online.target
After=network-online.target docker.service
Requires=docker.service
# Restart=always, but give up after 6 failed starts in 30 minutes (autostop then
# powers the VM off, see text2img-autostop.service).
StartLimitIntervalSec=30min
StartLimitBurst=6

[Service]
Type=simple
# TEXT2IMG_IMAGE, TEXT2IMG_MODEL_CACHE_DIR, TEXT2IMG_BIND_IP, TEXT2IMG_PORT
EnvironmentFile=/etc/text2img/unit.env
ExecStartPre=-/usr/bin/docker rm --force text2img
# Published on the VM's internal IP (for the gateway) and on 127.0.0.1 (for autostop).
ExecStart=/usr/bin/docker run --rm --name text2img --pull never --gpus all \
    --env-file /etc/text2img/service.env \
    --volume ${TEXT2IMG_MODEL_CACHE_DIR}:/models \
    --publish ${TEXT2IMG_BIND_IP}:${TEXT2IMG_PORT}:8080 \
    --publish 127.0.0.1:${TEXT2IMG_PORT}:8080 \
    --log-driver json-file --log-opt max-size=20m --log-opt max-file=3 \
    --entrypoint text2img ${TEXT2IMG_IMAGE} serve --host 0.0.0.0 --port 8080
# Let an in-flight generation finish before the container is killed.
ExecStop=/usr/bin/docker stop -t 120 text2img
TimeoutStopSec=150
Restart=always
RestartSec=15

[Install]
WantedBy=multi-user.target
__UNIT__
  SERVICE_CHANGED=$CHANGED
}

# ---- the steps -------------------------------------------------------------------------

arm_autostop() {
  step arm-autostop "install and enable the autostop timer (before anything can fail)"
  write_autostop_files
  if [[ ! -f $ETC/autostop.env ]]; then
    printf '%s\n' "# defaults until the metadata has been read" |
      put_file 0600 "$ETC/autostop.env"
  fi
  write_watch_files
  if ((AUTOSTOP_CHANGED | WATCH_CHANGED)); then systemctl daemon-reload; fi
  ensure_enabled text2img-autostop.timer
  ensure_running text2img-autostop.timer "$AUTOSTOP_CHANGED"
}

start_watcher() {
  step metadata-watch "watch the metadata for new images (text2img-metadata-watch)"
  ensure_enabled text2img-metadata-watch.service
  if ((WATCH_CHANGED)); then
    # --no-block: this run may itself have been started by the watcher.
    systemctl restart --no-block text2img-metadata-watch.service
  elif ! systemctl is-active --quiet text2img-metadata-watch.service; then
    systemctl start --no-block text2img-metadata-watch.service
  fi
}

positive_int() { [[ $1 =~ ^[0-9]+$ ]] && ((10#$1 > 0)) && ((${#1} < 7)); }
valid_port() { positive_int "$1" && ((10#$1 < 65536)); }

read_settings() {
  step metadata "read settings from the instance metadata"
  md instance/attributes/text2img-image ""
  IMAGE=$REPLY
  md instance/attributes/text2img-idle-minutes 20
  IDLE_MINUTES=$REPLY
  md instance/attributes/text2img-boot-grace-minutes 30
  GRACE_MINUTES=$REPLY
  md instance/attributes/text2img-token-secret ""
  TOKEN_SECRET=$REPLY
  md instance/attributes/text2img-model-cache /var/lib/text2img/models
  CACHE_DIR=$REPLY
  md instance/attributes/text2img-translate-project ""
  TRANSLATE_PROJECT=$REPLY
  md instance/attributes/text2img-translation on
  TRANSLATION=$REPLY
  md instance/attributes/text2img-port 8080
  PORT=$REPLY
  md instance/network-interfaces/0/ip ""
  BIND_IP=$REPLY

  local digest_re='^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?/[a-z0-9._/-]+@sha256:[0-9a-f]{64}$'
  [[ -n $IMAGE ]] || die "metadata 'text2img-image' is not set: it must name the service image by digest (REGION-docker.pkg.dev/PROJECT/REPO/text2img@sha256:...); run pulumi up"
  [[ $IMAGE =~ $digest_re ]] || die "metadata 'text2img-image' is '$IMAGE', not an image by digest (...@sha256:<64 hex digits>); tags such as :latest are refused because they can change under a running VM. Set the digest (pulumi up does)"
  positive_int "$IDLE_MINUTES" || die "metadata 'text2img-idle-minutes' is '$IDLE_MINUTES'; use a whole number of minutes > 0"
  positive_int "$GRACE_MINUTES" || die "metadata 'text2img-boot-grace-minutes' is '$GRACE_MINUTES'; use a whole number of minutes > 0"
  [[ $TOKEN_SECRET =~ ^projects/[^/[:space:]]+/secrets/[^/[:space:]]+$ ]] || die "metadata 'text2img-token-secret' is '$TOKEN_SECRET'; set it to projects/PROJECT/secrets/NAME (pulumi up does)"
  [[ $CACHE_DIR =~ ^/[A-Za-z0-9._/-]+$ ]] || die "metadata 'text2img-model-cache' is '$CACHE_DIR'; use an absolute path of letters, digits, . _ - /"
  [[ $TRANSLATION == on || $TRANSLATION == off ]] || die "metadata 'text2img-translation' is '$TRANSLATION'; use on or off"
  [[ -z $TRANSLATE_PROJECT || $TRANSLATE_PROJECT =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] || die "metadata 'text2img-translate-project' is '$TRANSLATE_PROJECT', not a project id"
  valid_port "$PORT" || die "metadata 'text2img-port' is '$PORT'; use a TCP port 1-65535"
  [[ $BIND_IP =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || die "the metadata server gave no internal IPv4 address (network-interfaces/0/ip is '$BIND_IP')"
  REGISTRY=${IMAGE%%/*}
  log "image $IMAGE; idle $IDLE_MINUTES min; boot grace $GRACE_MINUTES min; port $BIND_IP:$PORT; translation $TRANSLATION"

  # Autostop gets the configured limits right away.
  put_file 0600 "$ETC/autostop.env" <<EOF
# written by the text2img startup script from the instance metadata
TEXT2IMG_AUTOSTOP_IDLE_MINUTES=$IDLE_MINUTES
TEXT2IMG_AUTOSTOP_BOOT_GRACE_MINUTES=$GRACE_MINUTES
TEXT2IMG_AUTOSTOP_STATUS_URL=http://127.0.0.1:$PORT/v1/status
TEXT2IMG_AUTOSTOP_TOKEN_FILE=/etc/text2img/service.env
TEXT2IMG_AUTOSTOP_PAUSE_FILE=/etc/text2img/autostop.paused
EOF
}

wait_for_driver() {
  step nvidia-driver "wait for the NVIDIA driver (nvidia-smi, up to ${DRIVER_TIMEOUT}s)"
  local deadline=$((SECONDS + DRIVER_TIMEOUT)) out
  until out=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1); do
    if ((SECONDS >= deadline)); then
      die "the NVIDIA driver is not ready after ${DRIVER_TIMEOUT}s (nvidia-smi: ${out:-not found}). The Deep Learning VM image has the driver preinstalled; check that the VM has a GPU attached and that the image family is a -nvidia-* one"
    fi
    sleep "$DRIVER_POLL"
  done
  log "GPU: $out"
}

# apt and the packages' install scripts get the usual umask (not this script's 077):
# apt reads keyrings and lists as an unprivileged user.
apt_get() { (umask 022 && apt-get -o DPkg::Lock::Timeout=600 "$@"); }

apt_install() {
  retry "apt-get update" apt_get update -q
  retry "apt-get install $*" apt_get install -y -q --no-install-recommends "$@"
}

nvidia_repo() {
  local keyring="$ROOT/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg"
  mkdir -p "$(dirname "$keyring")" "$ROOT/etc/apt/sources.list.d"
  curl -fsSL --max-time 60 "$NVIDIA_REPO/gpgkey" -o "$WORK/nvidia.gpgkey" || return 1
  gpg --batch --yes --dearmor -o "$keyring" "$WORK/nvidia.gpgkey" || return 1
  # shellcheck disable=SC2016  # $(ARCH) is apt's variable, not the shell's
  printf 'deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] %s/stable/deb/$(ARCH) /\n' \
    "$NVIDIA_REPO" >"$ROOT/etc/apt/sources.list.d/nvidia-container-toolkit.list"
  chmod 0644 "$keyring" "$ROOT/etc/apt/sources.list.d/nvidia-container-toolkit.list"
}

ensure_docker() {
  step docker "make sure Docker and the NVIDIA container toolkit are installed"
  local installed=()
  if ! command -v docker >/dev/null; then
    log "docker is missing: installing docker.io"
    apt_install docker.io
    installed+=(docker.io)
  fi
  if ! command -v nvidia-ctk >/dev/null; then
    log "nvidia-ctk is missing: installing nvidia-container-toolkit from NVIDIA's apt repository"
    retry "NVIDIA apt repository key" nvidia_repo
    apt_install nvidia-container-toolkit
    installed+=(nvidia-container-toolkit)
  fi
  ensure_enabled docker.service
  if ! systemctl is-active --quiet docker.service; then systemctl start docker.service; fi
  if ! grep -qs '"nvidia"' "$DOCKER_DAEMON_JSON"; then
    log "registering the NVIDIA runtime with Docker"
    nvidia-ctk runtime configure --runtime=docker --config="$DOCKER_DAEMON_JSON"
    systemctl restart docker.service
  fi
  retry "docker daemon" docker info --format '{{.ServerVersion}}' >/dev/null
  log "docker ready${installed[*]:+ (installed: ${installed[*]})}"
}

login_and_pull() {
  access_token || return 1
  case $REGISTRY in
    *.pkg.dev | gcr.io | *.gcr.io)
      printf '%s' "$ACCESS_TOKEN" |
        docker login --username oauth2accesstoken --password-stdin "https://$REGISTRY" >/dev/null || return 1
      ;;
    *) log "$REGISTRY is not a Google registry: pulling without logging in" ;;
  esac
  local rc=0
  docker pull --quiet "$IMAGE" || rc=$?
  # the short-lived token is not left in /root/.docker/config.json
  docker logout "https://$REGISTRY" >/dev/null 2>&1 || true
  return "$rc"
}

pull_image() {
  step pull "pull $IMAGE"
  if docker image inspect --format '{{.Id}}' "$IMAGE" >/dev/null 2>&1; then
    log "image already present"
    return 0
  fi
  retry "docker pull" login_and_pull
}

# secret_try: one attempt at the API token; dies on answers that retrying cannot fix.
secret_try() {
  local url="$SECRETMANAGER/v1/$TOKEN_SECRET/versions/latest:access" code
  access_token || return 1
  code=$(printf 'header = "Authorization: Bearer %s"\n' "$ACCESS_TOKEN" |
    curl -sS -K - -o "$WORK/secret.json" -w '%{http_code}' --max-time 20 "$url" 2>>"$WORK/curl.log" || true)
  case $code in
    200) ;;
    403) die "Secret Manager refused $TOKEN_SECRET (HTTP 403): the VM's service account needs roles/secretmanager.secretAccessor on it (pulumi up grants it)" ;;
    404) die "Secret Manager has no enabled version of $TOKEN_SECRET (HTTP 404): check text2img-token-secret and that the secret has a version" ;;
    *)
      log "Secret Manager: HTTP $code"
      return 1
      ;;
  esac
  if ! API_TOKEN=$(python3 -c '
import base64, binascii, json, sys
try:
    data = json.load(sys.stdin)["payload"]["data"]
    print(base64.b64decode(data, validate=True).decode("utf-8").strip())
except (ValueError, KeyError, TypeError, binascii.Error):
    sys.exit("the Secret Manager answer has no valid payload.data")
' <"$WORK/secret.json"); then
    return 1
  fi
  rm -f "$WORK/secret.json"
}

fetch_token() {
  step secret "fetch the API token from Secret Manager ($TOKEN_SECRET)"
  retry "Secret Manager" secret_try
  [[ -n $API_TOKEN ]] || die "the latest version of $TOKEN_SECRET is empty; add a version with the token"
  [[ $API_TOKEN =~ ^[!-~]+$ ]] || die "the latest version of $TOKEN_SECRET is not a single-line token (printable ASCII without spaces); add a new version"
  log "API token fetched (${#API_TOKEN} characters)"
}

download_weights() {
  step weights "make sure the model weights are in $CACHE_DIR"
  local marker="$STATE/weights.ok" want="image=$IMAGE cache=$CACHE_DIR"
  if [[ -f $marker && $(<"$marker") == "$want" ]]; then
    log "weights already verified for this image and cache"
    return 0
  fi
  mkdir -p "$ROOT$CACHE_DIR"
  chmod 0755 "$ROOT$CACHE_DIR"
  # The container may run as a non-root user: it must own the cache it writes.
  local owner
  owner=$(docker run --rm --pull never --entrypoint sh "$IMAGE" -c 'echo "$(id -u):$(id -g)"') ||
    owner="(no answer)"
  if [[ $owner =~ ^[0-9]+:[0-9]+$ ]]; then
    if [[ $owner != 0:0 && $(stat -c %u:%g "$ROOT$CACHE_DIR") != "$owner" ]]; then
      log "giving $CACHE_DIR to the image's user $owner"
      chown -R "$owner" "$ROOT$CACHE_DIR"
    fi
  else
    log "warning: could not tell the image's user (got '$owner'); leaving $CACHE_DIR as it is"
  fi
  log "running text2img download (several GB on the first boot; a quick check later)"
  docker rm --force text2img-download >/dev/null 2>&1 || true
  retry "weights download" docker run --rm --name text2img-download --pull never \
    --volume "$CACHE_DIR:/models" --entrypoint text2img "$IMAGE" download --cache-dir /models --quiet
  printf '%s\n' "$want" | put_file 0644 "$marker"
}

install_service() {
  step service "write the env files and text2img.service, then (re)start what changed"
  local env_changed=0
  put_file 0600 "$ETC/unit.env" <<EOF
# written by the text2img startup script; re-run it instead of editing
TEXT2IMG_IMAGE=$IMAGE
TEXT2IMG_MODEL_CACHE_DIR=$CACHE_DIR
TEXT2IMG_BIND_IP=$BIND_IP
TEXT2IMG_PORT=$PORT
EOF
  env_changed=$((env_changed | CHANGED))
  put_file 0600 "$ETC/service.env" <<EOF
# written by the text2img startup script; the container's environment (docker --env-file)
TEXT2IMG_API_TOKEN=$API_TOKEN
TEXT2IMG_MODEL=glide
TEXT2IMG_MODEL_CACHE=/models
TEXT2IMG_DEVICE=cuda
TEXT2IMG_TRANSLATION=$TRANSLATION
TEXT2IMG_TRANSLATE_PROJECT=$TRANSLATE_PROJECT
EOF
  env_changed=$((env_changed | CHANGED))
  write_service_unit
  if ((SERVICE_CHANGED)); then systemctl daemon-reload; fi
  ensure_enabled text2img.service
  ensure_running text2img.service $((SERVICE_CHANGED | env_changed))
  printf '%s\n' "$IMAGE" | put_file 0644 "$STATE/deployed-image"
  prune_old_images
}

# Older digests of the same repository would fill the boot disk (several GB each).
prune_old_images() {
  local repo=${IMAGE%@*} ref
  while read -r ref; do
    if [[ $ref == "$IMAGE" || $ref == *"<none>"* ]]; then continue; fi
    if docker image rm "$ref" >/dev/null 2>&1; then log "removed the old image $ref"; fi
  done < <(docker image ls --digests --format '{{.Repository}}@{{.Digest}}' "$repo" 2>/dev/null || true)
}

main() {
  mkdir -p "$RUN" "$ETC" "$STATE"
  chmod 0700 "$ETC"
  exec 9>>"$RUN/startup.lock"
  if ! flock -w "$LOCK_TIMEOUT" 9; then
    die "another run of the startup script still holds $RUN/startup.lock after ${LOCK_TIMEOUT}s"
  fi
  WORK=$(mktemp -d "$RUN/work.XXXXXX")
  log "starting (pid $$)"
  arm_autostop
  start_watcher
  read_settings
  wait_for_driver
  ensure_docker
  pull_image
  fetch_token
  download_weights
  install_service
  STEP=finished
  log "done: text2img.service runs $IMAGE on $BIND_IP:$PORT"
}

main "$@"
