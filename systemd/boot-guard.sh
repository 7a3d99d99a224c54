#!/bin/bash
# text2img-boot-guard: ExecStartPre of text2img.service, so it runs on every boot and
# before every start of the service.
#  1. Stop, disable and mask the Deep Learning VM's Jupyter units: the images enable
#     jupyter.service at boot, listening on 8080 (SkyPilot stops and disables `jupyter`
#     on GCP's images for this, skypilot-org/skypilot PR #2448 and sky/serve's
#     SERVE_PREHOOK_COMMANDS; Google's ops-agent tests run `service jupyter stop` on DLVM
#     images, GoogleCloudPlatform/ops-agent #1740). Every unit named jupyter*.service is
#     handled (jupyterhub.service is Azure's image's, the same PR).
#  2. Make sure nothing else listens on the service port. If something does after a
#     short wait, do not restart-loop: report PORT_IN_USE with the process holding the
#     port (serial console, journal, guest attribute text2img/boot-failure, which the
#     gateway reads), stop text2img.service and power off (a pause file keeps it up).
# Environment: TEXT2IMG_PORT (from /etc/text2img/unit.env); knobs TEXT2IMG_PORT_WAIT
# (seconds, 15), TEXT2IMG_CONSOLE (/dev/ttyS0), GCE_METADATA_HOST.
set -uo pipefail
export LC_ALL=C
TAG=text2img-boot-guard
PORT="${TEXT2IMG_PORT:-8080}"
WAIT="${TEXT2IMG_PORT_WAIT:-15}"
CONSOLE="${TEXT2IMG_CONSOLE:-/dev/ttyS0}"
METADATA_HOST="${GCE_METADATA_HOST:-metadata.google.internal}"
STATE=/var/lib/text2img
ATTRIBUTE="http://$METADATA_HOST/computeMetadata/v1/instance/guest-attributes/text2img/boot-failure"

log() {
  printf '%s %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$TAG" "$*" >&2
  logger -t "$TAG" -- "$*" 2>/dev/null || true
}

quiet_jupyter() {
  local unit state
  while read -r unit state _; do
    [[ -n $unit && $state != masked ]] || continue
    log "stopping, disabling and masking $unit (the Deep Learning VM's Jupyter: it listens on 8080)"
    systemctl disable --now --quiet "$unit" 2>/dev/null || systemctl stop "$unit" 2>/dev/null || true
    # a unit file in /etc cannot be masked (a mask is a link there); disabled is enough then
    systemctl mask --quiet "$unit" 2>/dev/null || log "$unit is disabled and stopped (not masked)"
  done < <(systemctl list-unit-files --no-legend --plain --type=service 'jupyter*' 2>/dev/null)
  systemctl stop 'jupyter*.service' 2>/dev/null || true
}

# listeners: the `ss` lines of whatever listens on TCP port PORT
listeners() { ss -Hltnp "sport = :$PORT" 2>/dev/null; }

# holder: "name (pid N, unit U): command line" for each process in the ss lines on stdin
holder() {
  local line pid name unit cmd out=()
  while read -r line; do
    [[ $line =~ \(\"([^\"]+)\",pid=([0-9]+) ]] || continue
    name=${BASH_REMATCH[1]} pid=${BASH_REMATCH[2]}
    unit=$(grep -oE '[^/]+\.(service|scope)$' "/proc/$pid/cgroup" 2>/dev/null | head -n1)
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-160)
    out+=("$name (pid $pid${unit:+, unit $unit}): ${cmd% }")
  done
  if ((${#out[@]} == 0)); then out=("a process this guard cannot see (ss shows no pid)"); fi
  local IFS=';'
  printf '%s' "${out[*]}"
}

port_in_use() {
  local who reason
  who=$(listeners | holder)
  reason="text2img: PORT_IN_USE: port $PORT is held by $who. Stop that program (or move text2img to another port: pulumi config set servicePort N), then start the VM again"
  log "FAILED: $reason"
  printf '%s\n' "$reason" >>"$CONSOLE" 2>/dev/null || true
  curl -sS -X PUT --max-time 5 -H 'Metadata-Flavor: Google' --data "$reason" "$ATTRIBUTE" \
    >/dev/null 2>&1 || log "warning: could not set the guest attribute text2img/boot-failure"
  mkdir -p "$STATE" && printf 'PORT_IN_USE\n' >"$STATE/boot-failure"
  # No restart loop: a poweroff (or, paused, a stop job) replaces this start job and its
  # Restart=. Either job ends this script too.
  if [[ -e /etc/text2img/autostop.paused ]]; then
    log "autostop is paused (/etc/text2img/autostop.paused): staying up for you to look"
    systemctl stop --no-block text2img.service
  else
    log "powering off now (the next request boots it again and tries once more)"
    systemctl poweroff --no-block
  fi
  exit 1
}

quiet_jupyter
deadline=$((SECONDS + WAIT))
while [[ -n $(listeners) ]]; do
  if ((SECONDS >= deadline)); then port_in_use; fi
  sleep 1
done
if [[ $(cat "$STATE/boot-failure" 2>/dev/null) == PORT_IN_USE ]]; then
  curl -sS -X DELETE --max-time 5 -H 'Metadata-Flavor: Google' "$ATTRIBUTE" >/dev/null 2>&1 || true
  rm -f "$STATE/boot-failure"
fi
log "port $PORT is free"
