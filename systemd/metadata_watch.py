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
