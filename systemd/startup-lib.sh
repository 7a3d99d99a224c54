#!/bin/bash
# Helpers of systemd/startup.sh (sourced by it; never run alone): logging, errors and
# retries, atomic file writes, systemd and metadata-server helpers, apt's locks. They use
# the settings startup.sh defines (ROOT, TAG, STEP, WORK, METADATA_HOST, NET_TIMEOUT, ...).
# shellcheck disable=SC2034,SC2154  # variables shared with startup.sh

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

# md_file PATH OUT: one attempt at a value kept byte for byte in OUT; FOUND=1 (0 on 404).
md_file() {
  local code
  code=$(md_fetch "$1" "$2")
  case $code in
    200) FOUND=1 ;;
    404) FOUND=0 ;;
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

# apt_free: no apt or dpkg lock is held (apt takes POSIX record locks, as lockf does).
apt_free() {
  python3 - "$ROOT/var/lib/dpkg/lock-frontend" "$ROOT/var/lib/dpkg/lock" \
    "$ROOT/var/lib/apt/lists/lock" <<'EOF'
import fcntl, sys
for path in sys.argv[1:]:
    try:
        with open(path, "a") as f:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except FileNotFoundError:
        continue
    except OSError:
        sys.exit(1)
EOF
}

# quiet_apt: Ubuntu's apt-daily and unattended-upgrades run at first boot and hold apt's
# locks; DPkg::Lock::Timeout does not cover `apt-get update` (it exits 100 at once). Stop
# them (unattended-upgrade stops at a safe point) and wait for the locks to be free.
quiet_apt() {
  local deadline=$((SECONDS + APT_TIMEOUT))
  systemctl stop apt-daily.service apt-daily-upgrade.service unattended-upgrades.service \
    2>/dev/null || true
  until apt_free; do
    if ((SECONDS >= deadline)); then
      die "apt is still locked after ${APT_TIMEOUT}s (another apt or dpkg runs: ps -C apt-get,dpkg,unattended-upgr)"
    fi
    log "waiting for apt-daily/unattended-upgrades to release apt's locks"
    sleep 2
  done
}

