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
  # the apt timers stopped at the start run again, once the packages are held
  if ((HELD)); then thaw_apt; fi
}
HELD=0
trap cleanup EXIT

# retry DESCRIPTION COMMAND...: run COMMAND until it succeeds, with exponential back-off,
# at most RETRY_ATTEMPTS times and not beyond NET_TIMEOUT seconds in total. A failure
# with IAM_DENIED set (an HTTP 403; it says which grant is missing) is retried for up to
# IAM_TIMEOUT seconds (600) instead: a fresh IAM grant takes minutes to apply
# (Google: typically 2, sometimes 7 or more), and the first boot runs right after
# `pulumi up` granted them. Each wait is logged; the end names the missing grant.
IAM_DENIED=
retry() {
  local desc=$1 attempt=1 delay=$RETRY_DELAY deadline=$((SECONDS + NET_TIMEOUT))
  local iam_deadline=$((SECONDS + IAM_TIMEOUT)) iam_delay=${IAM_DELAY:-5} started=$SECONDS
  shift
  IAM_DENIED=
  until "$@"; do
    if [[ -n $IAM_DENIED ]]; then
      if ((SECONDS + iam_delay > iam_deadline)); then
        die "$desc: still refused (HTTP 403) after $((SECONDS - started))s: $IAM_DENIED. A grant made by pulumi up applies within minutes; check it exists (gcloud projects get-iam-policy), then re-run: sudo google_metadata_script_runner startup"
      fi
      log "$desc: refused (HTTP 403), perhaps an IAM grant still applying (it can take up to 7 minutes or more); waiting ${iam_delay}s, $((SECONDS - started))s of up to ${IAM_TIMEOUT}s so far"
      sleep "$iam_delay"
      iam_delay=$((iam_delay * 2))
      if ((iam_delay > 60)); then iam_delay=60; fi
      IAM_DENIED=
      deadline=$((SECONDS + NET_TIMEOUT)) attempt=1
      continue
    fi
    if ((attempt >= RETRY_ATTEMPTS || SECONDS + delay > deadline)); then
      log "$desc: giving up after $attempt attempt(s) in $((SECONDS - started))s"
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
positive_int() { [[ $1 =~ ^[0-9]+$ ]] && ((10#$1 > 0)) && ((${#1} < 7)); }
valid_port() { positive_int "$1" && ((10#$1 < 65536)); }

# check_lines KEY REGEX VALUE HINT: every non-empty line of metadata KEY's VALUE matches
# REGEX, names no absolute path and climbs no `..`; else stop with the line and HINT.
check_lines() {
  local line
  while IFS= read -r line; do
    [[ -z $line || $line =~ $2 && $line != /* && $line != *..* ]] ||
      die "metadata '$1' has the line '$line'; $4"
  done <<<"$3"
}

# model_env_args: MODEL_ENV (TEXT2IMG_NAME=value lines) -> MODEL_ENV_ARGS (docker --env)
model_env_args() {
  local line
  MODEL_ENV_ARGS=()
  while IFS= read -r line; do [[ -z $line ]] || MODEL_ENV_ARGS+=(--env "$line"); done <<<"$MODEL_ENV"
}

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

# freeze_apt: at first boot nothing orders apt-daily(-upgrade) after our holds yet (the
# image's timers are persistent and fire soon after boot). Stop the timers first thing, so
# no new upgrade starts while this script runs; hold_packages stops one that already runs
# (unattended-upgrade stops at a safe point) before holding. The timers start again when
# the script ends. From the next boot on, text2img-hold.service runs before them.
APT_FROZEN=0
freeze_apt() {
  systemctl stop apt-daily.timer apt-daily-upgrade.timer 2>/dev/null || true
  APT_FROZEN=1
}

thaw_apt() {
  if ((APT_FROZEN)); then
    systemctl start apt-daily.timer apt-daily-upgrade.timer 2>/dev/null || true
    APT_FROZEN=0
  fi
}

# apt and the packages' install scripts get the usual umask (not this script's 077):
# apt reads keyrings and lists as an unprivileged user.
apt_get() { (umask 022 && apt-get -o DPkg::Lock::Timeout=600 "$@"); }

apt_install() {
  quiet_apt
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

# Older digests of the same repository would fill the boot disk (several GB each).
prune_old_images() {
  local repo=${IMAGE%@*} ref
  while read -r ref; do
    if [[ $ref == "$IMAGE" || $ref == *"<none>"* ]]; then continue; fi
    if docker image rm "$ref" >/dev/null 2>&1; then log "removed the old image $ref"; fi
  done < <(docker image ls --digests --format '{{.Repository}}@{{.Digest}}' "$repo" 2>/dev/null || true)
}

# builtin_prefetch MODEL: the prefetch patterns of the engines this script knows, for a
# VM whose metadata has no text2img-prefetch yet (EngineSpec.prefetch; a test compares).
builtin_prefetch() {
  case $1 in
    glide) printf '%s\n' base.fp16.safetensors upsample.fp16.safetensors ;;
    sdxl-lightning)
      printf 'huggingface/models--*/snapshots/*/%s\n' text_encoder/model.fp16.safetensors \
        text_encoder_2/model.fp16.safetensors sdxl_lightning_4step_unet.safetensors \
        diffusion_pytorch_model.safetensors
      ;;
  esac
}
