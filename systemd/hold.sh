#!/bin/bash
# text2img-hold: keep apt away from the kernel and the NVIDIA driver. An automatic kernel
# upgrade can leave the NVIDIA module unbuilt or unloaded at the next boot
# (GoogleCloudPlatform/compute-gpu-installation #25, #10, #34; GoogleCloudPlatform/ops-agent
# #2426: the 590 DKMS source does not build against a newer GCP kernel), and a driver
# upgrade under a running CUDA stack breaks it (aws-samples/aws-deep-learning-ami-ubuntu-
# dcv-desktop #28: hold all nvidia packages and the kernel's). A new kernel comes with a
# new image (docs/vm.md).
#
# Run by text2img-hold.service, which apt-daily.service and apt-daily-upgrade.service (the
# units that run unattended-upgrade) want and wait for, so from the second boot on no
# upgrade can start before the holds are in place; and by the startup script at first
# boot, right after it has stopped the apt timers (systemd/startup.sh, step hold).
#
# Held: every installed package of the kernel (linux-image/modules/modules-extra/headers/
# objects/signatures-<version>, the linux-gcp* metapackages that pull in new kernels, and
# Ubuntu's precompiled NVIDIA modules linux-modules-nvidia-<branch>-server-gcp and
# linux-objects/signatures-nvidia-*), the driver (nvidia-*, libnvidia-*, NVIDIA's
# cuda-drivers*), and dkms. `hold.sh --check` only tells: exit 0 all held, 3 not yet. Knob: TEXT2IMG_HOLD_LOCK_TIMEOUT (seconds to wait for dpkg's
# lock, default 120).
set -euo pipefail
export LC_ALL=C
TAG=text2img-hold
LOCK_TIMEOUT="${TEXT2IMG_HOLD_LOCK_TIMEOUT:-120}"
PATTERN='^(linux-(image|modules|modules-extra|headers|objects|signatures|buildinfo)-.+|linux-gcp(-.+)?|linux-(image|headers|modules|tools)-gcp(-.+)?|linux-modules-nvidia-.+|nvidia-.+|libnvidia-.+|cuda-drivers(-.+)?|dkms)$'

log() {
  printf '%s %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$TAG" "$*" >&2
  logger -t "$TAG" -- "$*" 2>/dev/null || true
}

# installed (ii) or already held (hi) packages whose names match
wanted=$(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' 2>/dev/null |
  awk '$1 ~ /^[hi]i/ {print $2}' | grep -E "$PATTERN" | sort -u || true)
missing=$(comm -23 <(printf '%s\n' "$wanted" | grep . || true) \
  <(apt-mark showhold 2>/dev/null | sort -u) | grep . || true)
if [[ -z $missing ]]; then
  log "kernel and NVIDIA packages already held ($(wc -w <<<"$wanted") packages)"
  exit 0
fi
if [[ ${1:-} == --check ]]; then exit 3; fi # some are not held yet
deadline=$((SECONDS + LOCK_TIMEOUT))
# shellcheck disable=SC2086  # one package name per word
until apt-mark hold $missing >/dev/null; do
  if ((SECONDS >= deadline)); then
    log "FAILED: apt-mark hold did not succeed for ${LOCK_TIMEOUT}s (dpkg's lock is held: ps -C apt-get,dpkg,unattended-upgr)"
    exit 1
  fi
  log "apt-mark hold failed (dpkg busy?); retrying in 2s"
  sleep 2
done
log "held: $(tr '\n' ' ' <<<"$missing")"
