#!/bin/bash
# text2img-prefetch: read the files a start of the service reads into the page cache, four
# at a time (a persistent disk reaches its throughput only with reads in flight), so the
# service's load reads memory instead of a cold disk. Run by text2img-prefetch.service,
# which text2img.service wants and starts after, on every boot (wakes included).
#
# /etc/text2img/prefetch.env: TEXT2IMG_PREFETCH_CACHE, the model cache on the host.
# /etc/text2img/prefetch.patterns: `find -path` patterns relative to that cache, one a
# line (instance metadata `text2img-prefetch`, from the engine's EngineSpec.prefetch;
# the startup script writes both files).
set -uo pipefail
export LC_ALL=C
TAG=text2img-prefetch
CACHE="${TEXT2IMG_PREFETCH_CACHE:-/var/lib/text2img/models}"
PATTERNS="${TEXT2IMG_PREFETCH_PATTERNS:-/etc/text2img/prefetch.patterns}"

log() {
  printf '%s %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$TAG" "$*" >&2
  logger -t "$TAG" -- "$*" 2>/dev/null || true
}

if [[ ! -s $PATTERNS ]]; then
  log "no patterns in $PATTERNS: nothing to prefetch"
  exit 0
fi
list=$(mktemp)
trap 'rm -f "$list"' EXIT
while IFS= read -r pattern || [[ -n $pattern ]]; do
  [[ -n $pattern && $pattern != \#* ]] || continue
  find -L "$CACHE" -path "$CACHE/$pattern" -type f -print0 2>/dev/null >>"$list" || true
done <"$PATTERNS"
count=$(tr -cd '\0' <"$list" | wc -c)
if ((count == 0)); then
  log "no cached weights match $PATTERNS (first boot?): nothing to prefetch"
  exit 0
fi
bytes=$(xargs -0 -r stat -L -c %s <"$list" | awk '{s += $1} END {print s + 0}')
log "reading $count file(s), $((bytes / 1048576)) MiB: $(tr '\0' ' ' <"$list")"
started=$SECONDS
xargs -0 -r -P 4 -n 1 cat <"$list" >/dev/null || log "warning: some files could not be read"
log "done in $((SECONDS - started))s"
