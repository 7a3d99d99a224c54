#!/bin/bash
# text2img VM startup script: the boot steps. Compute Engine runs it as root on EVERY boot
# (instance metadata "startup-script", set verbatim by infra/); `sudo
# google_metadata_script_runner startup` re-runs it, and text2img-metadata-watch does so
# when the metadata changes. Idempotent: it (re)starts only what changed.
#
# The units and programs it installs are the files in systemd/ of the repository; infra/
# delivers each as one instance-metadata attribute (text2img-file-*, DEVELOPERS.md).
# Steps: stop the apt timers -> install those files and arm autostop -> hold kernel +
# NVIDIA packages -> read settings -> start reading the weights into the page cache ->
# wait for the NVIDIA driver (power off fast if it never loads) -> Docker + NVIDIA toolkit
# -> pull the image by digest -> API token -> weights -> env files -> start
# text2img.service -> apt timers on again. On later boots systemd itself starts
# text2img-hold (before apt-daily*), text2img-prefetch and text2img.service (whose
# ExecStartPre, boot-guard.sh, turns Jupyter off and checks the port) without waiting
# for this script.
# A failing step is named in the log (journalctl -t text2img-startup); autostop is armed
# first, so a broken VM still powers itself off after the boot grace period.
#
# Test/override knobs (environment; the VM uses the defaults):
#   TEXT2IMG_ROOT                     prefix for every path written (default: none)
#   GCE_METADATA_HOST                 metadata server host[:port] (metadata.google.internal)
#   TEXT2IMG_SECRETMANAGER_ENDPOINT   https://secretmanager.googleapis.com
#   TEXT2IMG_NVIDIA_REPO              https://nvidia.github.io/libnvidia-container
#   TEXT2IMG_DRIVER_TIMEOUT / _POLL   seconds to wait for nvidia-smi (180) / between tries (5)
#   TEXT2IMG_APT_TIMEOUT              seconds to wait for apt-daily/unattended-upgrades (600)
#   TEXT2IMG_CONSOLE                  where the poweroff reason goes (/dev/ttyS0, serial port 1)
#   TEXT2IMG_NET_TIMEOUT              seconds one network step may keep retrying (900)
#   TEXT2IMG_RETRY_ATTEMPTS / _DELAY  attempts per network step (8) / first back-off (2 s)
#   TEXT2IMG_IAM_TIMEOUT / _DELAY     seconds to wait out HTTP 403s (600) / first wait (5 s)
#   TEXT2IMG_LOCK_TIMEOUT             seconds to wait for a concurrent run to finish (7200)
set -Eeuo pipefail
umask 077
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

ROOT="${TEXT2IMG_ROOT:-}"
METADATA_HOST="${GCE_METADATA_HOST:-metadata.google.internal}"
SECRETMANAGER="${TEXT2IMG_SECRETMANAGER_ENDPOINT:-https://secretmanager.googleapis.com}"
NVIDIA_REPO="${TEXT2IMG_NVIDIA_REPO:-https://nvidia.github.io/libnvidia-container}"
DRIVER_TIMEOUT="${TEXT2IMG_DRIVER_TIMEOUT:-180}"
DRIVER_POLL="${TEXT2IMG_DRIVER_POLL:-5}"
NET_TIMEOUT="${TEXT2IMG_NET_TIMEOUT:-900}"
IAM_TIMEOUT="${TEXT2IMG_IAM_TIMEOUT:-600}"
IAM_DELAY="${TEXT2IMG_IAM_DELAY:-5}"
RETRY_ATTEMPTS="${TEXT2IMG_RETRY_ATTEMPTS:-8}"
RETRY_DELAY="${TEXT2IMG_RETRY_DELAY:-2}"
LOCK_TIMEOUT="${TEXT2IMG_LOCK_TIMEOUT:-7200}"
APT_TIMEOUT="${TEXT2IMG_APT_TIMEOUT:-600}"
CONSOLE="${TEXT2IMG_CONSOLE:-/dev/ttyS0}"

ETC="$ROOT/etc/text2img"
STATE="$ROOT/var/lib/text2img"
RUN="$ROOT/run/text2img"
DOCKER_DAEMON_JSON="$ROOT/etc/docker/daemon.json"
TAG=text2img-startup
STEP=begin
WORK=

# ---- the helpers ----------------------------------------------------------------------
# Logging, errors, retries, file writes, systemd and metadata-server helpers are
# systemd/startup-lib.sh, delivered as the attribute text2img-file-startup-lib-sh: fetch
# it first (the one step that cannot log to the journal yet).
fetch_lib() {
  local attempt url="http://$METADATA_HOST/computeMetadata/v1/instance/attributes/text2img-file-startup-lib-sh"
  for attempt in 1 2 3 4 5 6; do
    if curl -fsS --max-time 10 -H 'Metadata-Flavor: Google' -o "$1" "$url"; then return 0; fi
    echo "$TAG: metadata text2img-file-startup-lib-sh: attempt $attempt failed" >&2
    sleep "$((attempt * RETRY_DELAY))"
  done
  echo "$TAG: FAILED: cannot read text2img-file-startup-lib-sh from the metadata; run pulumi up" >&2
  exit 1
}
LIB_SH=$(mktemp)
fetch_lib "$LIB_SH"
# shellcheck source=startup-lib.sh
source "$LIB_SH"
rm -f "$LIB_SH"

# ---- the steps -------------------------------------------------------------------------

# install_files: every file infra delivered (metadata key, destination, mode, group).
# A group's flag (AUTOSTOP_CHANGED, WATCH_CHANGED, SERVICE_CHANGED, HOLD_CHANGED) is 1 if a
# file of the group changed.
install_files() {
  local key dest mode group
  AUTOSTOP_CHANGED=0 WATCH_CHANGED=0 SERVICE_CHANGED=0 HOLD_CHANGED=0
  while read -r key dest mode group; do
    retry "metadata $key" md_file "instance/attributes/$key" "$WORK/file"
    [[ $FOUND == 1 && -s $WORK/file ]] || die "metadata '$key' is missing or empty: it carries $dest (a file of systemd/ in the repository); run pulumi up"
    put_file "$mode" "$ROOT$dest" <"$WORK/file"
    printf -v "$group" '%d' $((${!group} | CHANGED))
  done <<'EOF'
text2img-file-autostop-py /usr/local/lib/text2img/autostop.py 0755 AUTOSTOP_CHANGED
text2img-file-autostop-service /etc/systemd/system/text2img-autostop.service 0644 AUTOSTOP_CHANGED
text2img-file-autostop-timer /etc/systemd/system/text2img-autostop.timer 0644 AUTOSTOP_CHANGED
text2img-file-metadata-watch-py /usr/local/lib/text2img/metadata_watch.py 0755 WATCH_CHANGED
text2img-file-metadata-watch-service /etc/systemd/system/text2img-metadata-watch.service 0644 WATCH_CHANGED
text2img-file-redeploy-service /etc/systemd/system/text2img-redeploy.service 0644 WATCH_CHANGED
text2img-file-text2img-service /etc/systemd/system/text2img.service 0644 SERVICE_CHANGED
text2img-file-boot-guard-sh /usr/local/lib/text2img/boot-guard.sh 0755 SERVICE_CHANGED
text2img-file-prefetch-sh /usr/local/lib/text2img/prefetch.sh 0755 SERVICE_CHANGED
text2img-file-prefetch-service /etc/systemd/system/text2img-prefetch.service 0644 SERVICE_CHANGED
text2img-file-hold-sh /usr/local/lib/text2img/hold.sh 0755 HOLD_CHANGED
text2img-file-hold-service /etc/systemd/system/text2img-hold.service 0644 HOLD_CHANGED
EOF
}

arm_autostop() {
  step arm-autostop "install the files from the metadata, enable the autostop timer (before anything can fail)"
  install_files
  if [[ ! -f $ETC/autostop.env ]]; then
    printf '%s\n' "# defaults until the metadata has been read" |
      put_file 0600 "$ETC/autostop.env"
  fi
  if ((AUTOSTOP_CHANGED | WATCH_CHANGED | SERVICE_CHANGED | HOLD_CHANGED)); then
    systemctl daemon-reload
  fi
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
  md instance/attributes/text2img-model glide
  MODEL=$REPLY
  md instance/attributes/text2img-prefetch ""
  PREFETCH=$REPLY
  md instance/attributes/text2img-model-env ""
  MODEL_ENV=$REPLY
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
  [[ $MODEL =~ ^[a-z0-9][a-z0-9-]{0,39}$ ]] || die "metadata 'text2img-model' is '$MODEL', not a model name (glide, sdxl-lightning)"
  valid_port "$PORT" || die "metadata 'text2img-port' is '$PORT'; use a TCP port 1-65535"
  check_lines text2img-prefetch '^[A-Za-z0-9._*?/-]+$' "$PREFETCH" "use find -path patterns relative to the model cache (letters, digits, . _ - / * ?), one a line"
  check_lines text2img-model-env '^TEXT2IMG_[A-Z0-9_]+=[A-Za-z0-9,._-]*$' "$MODEL_ENV" "use TEXT2IMG_NAME=value lines (letters, digits, , . _ -), as pulumi up writes them"
  model_env_args
  [[ $BIND_IP =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || die "the metadata server gave no internal IPv4 address (network-interfaces/0/ip is '$BIND_IP')"
  REGISTRY=${IMAGE%%/*}
  log "image $IMAGE; model $MODEL; idle $IDLE_MINUTES min; boot grace $GRACE_MINUTES min; port $BIND_IP:$PORT; translation $TRANSLATION"

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

# prefetch_weights: text2img-prefetch.service reads the model's weights into the page cache
# before text2img.service starts, on every boot (systemd/prefetch.sh). Write what it
# reads: the cache and the patterns (metadata text2img-prefetch, one `find -path` pattern
# relative to the cache a line, from the engine's EngineSpec.prefetch; without it the
# built-in selection for glide and sdxl-lightning). On this boot, when the service is not
# running yet (first boot, a new model), start it now: it reads while the driver and
# Docker come up.
prefetch_weights() {
  step prefetch "read the $MODEL weights into the page cache (text2img-prefetch.service)"
  local patterns
  if [[ -n $PREFETCH ]]; then
    patterns=$PREFETCH
  else
    patterns=$(builtin_prefetch "$MODEL")
    log "metadata 'text2img-prefetch' is not set: the built-in selection for $MODEL"
  fi
  printf '%s\n' "$patterns" | put_file 0644 "$ETC/prefetch.patterns"
  printf 'TEXT2IMG_PREFETCH_CACHE=%s\n' "$CACHE_DIR" | put_file 0644 "$ETC/prefetch.env"
  ensure_enabled text2img-prefetch.service
  if systemctl is-active --quiet text2img.service; then
    log "the service is running: it read its weights already"
    return 0
  fi
  systemctl start --no-block text2img-prefetch.service ||
    log "warning: could not start the prefetch (the service reads the weights itself)"
}

# gpu_failure REASON: the driver did not load. Say why on the serial console, leave a
# guest attribute the gateway reads (start_failed, cause GPU_DRIVER), and power off now
# instead of billing the GPU through the boot grace period. A pause file keeps it up.
gpu_failure() {
  local reason="text2img: GPU driver did not load: $1"
  trap - ERR
  log "FAILED in step '$STEP': $reason"
  printf '%s\n' "$reason" >>"$ROOT$CONSOLE" 2>/dev/null || true
  curl -sS -X PUT --max-time 5 -H 'Metadata-Flavor: Google' --data "$reason" \
    "http://$METADATA_HOST/computeMetadata/v1/instance/guest-attributes/text2img/boot-failure" \
    >/dev/null 2>&1 || log "warning: could not set the guest attribute text2img/boot-failure"
  printf 'GPU_DRIVER\n' >"$STATE/boot-failure"
  HELD=0 # powering off: the apt timers need not run again
  if [[ -e $ETC/autostop.paused ]]; then
    log "autostop is paused ($ETC/autostop.paused): staying up for you to look"
  else
    log "powering off now (the next request boots it again and tries once more)"
    systemctl poweroff
  fi
  exit 1
}

wait_for_driver() {
  step nvidia-driver "wait for the NVIDIA driver (nvidia-smi, up to ${DRIVER_TIMEOUT}s)"
  local deadline=$((SECONDS + DRIVER_TIMEOUT)) out
  until out=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1); do
    if ((SECONDS >= deadline)); then
      gpu_failure "nvidia-smi failed for ${DRIVER_TIMEOUT}s on kernel $(uname -r) (${out:-not found}). A kernel updated without its NVIDIA module does this; recreate the VM from a current image (docs/operations.md, Troubleshooting)"
    fi
    sleep "$DRIVER_POLL"
  done
  log "GPU: $out (kernel $(uname -r))"
  # withdraw our own report (an empty marker is an older script's); PORT_IN_USE is the
  # boot guard's to withdraw once the port is free
  local cause
  if [[ -e $STATE/boot-failure ]] && cause=$(<"$STATE/boot-failure") &&
    [[ -z $cause || $cause == GPU_DRIVER ]]; then
    curl -sS -X DELETE --max-time 5 -H 'Metadata-Flavor: Google' \
      "http://$METADATA_HOST/computeMetadata/v1/instance/guest-attributes/text2img/boot-failure" \
      >/dev/null 2>&1 || true
    rm -f "$STATE/boot-failure"
  fi
}

# hold_packages: hold the kernel and NVIDIA packages (systemd/hold.sh says which and why),
# and enable text2img-hold.service, which apt-daily.service and apt-daily-upgrade.service
# want and wait for on every later boot.
hold_packages() {
  step hold "hold the kernel and NVIDIA driver packages (apt-mark hold)"
  local hold="$ROOT/usr/local/lib/text2img/hold.sh" rc=0
  ensure_enabled text2img-hold.service
  "$hold" --check || rc=$?
  if ((rc == 3)); then
    quiet_apt
    "$hold"
  elif ((rc != 0)); then
    die "systemd/hold.sh --check exited $rc"
  fi
  HELD=1
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
  docker pull --quiet "$IMAGE" 2>"$WORK/pull.err" || rc=$?
  cat "$WORK/pull.err" >&2
  # Artifact Registry answers "denied: Permission ... denied" (HTTP 403) to an account
  # without roles/artifactregistry.reader, also while a fresh grant is still applying
  if ((rc != 0)) && grep -qiE 'denied|403 Forbidden' "$WORK/pull.err"; then
    IAM_DENIED="the VM's service account needs roles/artifactregistry.reader on the repository of $IMAGE (pulumi up grants it)"
  fi
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
    403)
      # a fresh grant takes minutes to apply: retry waits it out, then says this
      IAM_DENIED="the VM's service account needs roles/secretmanager.secretAccessor on $TOKEN_SECRET (pulumi up grants it)"
      return 1
      ;;
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
  local marker="$STATE/weights.ok"
  local want="image=$IMAGE model=$MODEL cache=$CACHE_DIR env=${MODEL_ENV//$'\n'/,}"
  if [[ -f $marker && $(<"$marker") == "$want" ]]; then
    log "weights already verified for this image, model and cache"
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
  log "running text2img download --model $MODEL (several GB on the first boot; a quick check later)"
  docker rm --force text2img-download >/dev/null 2>&1 || true
  retry "weights download" docker run --rm --name text2img-download --pull never \
    --volume "$CACHE_DIR:/models" "${MODEL_ENV_ARGS[@]}" --entrypoint text2img "$IMAGE" download --model "$MODEL" --cache-dir /models --quiet
  printf '%s\n' "$want" | put_file 0644 "$marker"
}

install_service() {
  step service "write the env files and text2img.service, then (re)start what changed"
  local env_changed=0
  put_file 0600 "$ETC/unit.env" <<EOF
# written by the text2img startup script; re-run it instead of editing
TEXT2IMG_IMAGE=$IMAGE
TEXT2IMG_MODEL=$MODEL
TEXT2IMG_MODEL_CACHE_DIR=$CACHE_DIR
TEXT2IMG_BIND_IP=$BIND_IP
TEXT2IMG_PORT=$PORT
EOF
  env_changed=$((env_changed | CHANGED))
  put_file 0600 "$ETC/service.env" <<EOF
# written by the text2img startup script; the container's environment (docker --env-file)
TEXT2IMG_API_TOKEN=$API_TOKEN
TEXT2IMG_MODEL=$MODEL
TEXT2IMG_MODEL_CACHE=/models
TEXT2IMG_DEVICE=cuda
TEXT2IMG_TRANSLATION=$TRANSLATION
TEXT2IMG_TRANSLATE_PROJECT=$TRANSLATE_PROJECT
TEXT2IMG_TRUST_FORWARDED=true
${MODEL_ENV}
EOF
  env_changed=$((env_changed | CHANGED))
  ensure_enabled text2img.service
  ensure_running text2img.service $((SERVICE_CHANGED | env_changed))
  printf '%s\n' "$IMAGE" | put_file 0644 "$STATE/deployed-image"
  prune_old_images
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
  freeze_apt
  arm_autostop
  hold_packages
  start_watcher
  read_settings
  prefetch_weights
  wait_for_driver
  ensure_docker
  pull_image
  fetch_token
  download_weights
  install_service
  thaw_apt
  STEP=finished
  log "done: text2img.service runs $IMAGE on $BIND_IP:$PORT"
}

main "$@"
