"""A sandbox for systemd/startup.sh: stub binaries, a fake metadata server and a fake
Secret Manager on 127.0.0.1, and a temporary root for every path the script writes.

The fake metadata server holds the attributes exactly as the Pulumi program renders them
(`infra.metadata.instance_metadata` with the stack's default settings), and the sandbox
runs the `startup-script` attribute, not a copy of the file."""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.http_server import base_url, serve_http

REPO = Path(__file__).resolve().parents[2]
STARTUP = REPO / "systemd" / "startup.sh"
DIGEST = "sha256:" + "a" * 64
IMAGE = f"asia-northeast1-docker.pkg.dev/my-proj/text2img/text2img@{DIGEST}"
IMAGE2 = f"asia-northeast1-docker.pkg.dev/my-proj/text2img/text2img@sha256:{'b' * 64}"
SECRET = "projects/my-proj/secrets/text2img-api-token"
API_TOKEN = "t2i-SECRET-api-token-3f9c1e5a7b2d4c6e"
ACCESS_TOKEN = "ya29.FAKE-access-token-51a2b3c4d5e6"
INTERNAL_IP = "10.128.0.7"


@cache
def rendered_metadata(**config: str) -> dict[str, str]:
    """The VM's metadata as `pulumi up` sets it: Pulumi.yaml defaults + `config`, through
    the program's own `load_settings` and `instance_metadata`."""
    import pulumi
    import yaml

    from infra.config import load_settings
    from infra.metadata import instance_metadata, read_startup_script

    spec = yaml.safe_load((REPO / "Pulumi.yaml").read_text())["config"]
    values = {k: d["default"] for k, d in spec.items() if "default" in d}
    values.update({"project": "my-proj", "idleMinutes": 15, "bootGraceMinutes": 25, **config})
    as_text = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in values.items()}
    pulumi.runtime.set_all_config({f"text2img:{k}": v for k, v in as_text.items()}, [])
    settings = load_settings()
    metadata = instance_metadata(
        settings, startup_script=read_startup_script(), image=IMAGE, token_secret=SECRET
    )
    assert all(isinstance(v, str) for v in metadata.values())
    return {k: str(v) for k, v in metadata.items()}


def default_attributes() -> dict[str, str]:
    return dict(rendered_metadata())


@dataclass
class FakeGoogle:
    """The metadata server and Secret Manager, as far as startup.sh and the watcher use them."""

    attributes: dict[str, str] = field(default_factory=default_attributes)
    secret_value: bytes = API_TOKEN.encode() + b"\n"
    secret_status: int = 200
    secret_denials: int = 0  # answer 403 to this many secret reads first (IAM propagating)
    secret_denied_until: float = 0.0  # and to every read before this time.monotonic()
    metadata_failures: int = 0  # answer 503 to this many metadata requests first
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    etag_counter: int = 1
    changed: threading.Condition = field(default_factory=threading.Condition)
    url: str = ""
    guest_attributes: dict[str, str] = field(default_factory=dict)
    internal_ip: str = INTERNAL_IP  # network-interfaces/0/ip

    def set_attribute(self, key: str, value: str) -> None:
        with self.changed:
            self.attributes[key] = value
            self.etag_counter += 1
            self.changed.notify_all()

    @property
    def etag(self) -> str:
        return f"etag-{self.etag_counter}"

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")


def _handler(fake: FakeGoogle) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            fake.requests.append(("GET", self.path, dict(self.headers.items())))
            parts = urlsplit(self.path)
            if parts.path.startswith("/computeMetadata/v1/"):
                self._metadata(parts.path.removeprefix("/computeMetadata/v1/"), parts.query)
            elif parts.path.startswith("/v1/") and parts.path.endswith("/versions/latest:access"):
                self._secret(
                    parts.path.removeprefix("/v1/").removesuffix("/versions/latest:access")
                )
            elif parts.path == "/nvidia/gpgkey":
                self._send(200, b"-----BEGIN PGP PUBLIC KEY BLOCK-----\nfake\n")
            else:
                self._send(404, b"not found")

        def do_PUT(self) -> None:
            self._guest("PUT")

        def do_DELETE(self) -> None:
            self._guest("DELETE")

        def _guest(self, method: str) -> None:
            """instance/guest-attributes/NS/KEY: what the VM writes for the gateway."""
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            fake.requests.append((method, self.path, dict(self.headers.items())))
            prefix = "/computeMetadata/v1/instance/guest-attributes/"
            if self.headers.get("Metadata-Flavor") != "Google" or not self.path.startswith(prefix):
                self._send(403, b"forbidden")
                return
            key = self.path.removeprefix(prefix)
            if method == "PUT":
                fake.guest_attributes[key] = body
            else:
                fake.guest_attributes.pop(key, None)
            self._send(200, b"")

        def _metadata(self, path: str, query: str) -> None:
            if self.headers.get("Metadata-Flavor") != "Google":
                self._send(403, b"Missing Metadata-Flavor:Google header")
                return
            if fake.metadata_failures > 0:
                fake.metadata_failures -= 1
                self._send(503, b"busy")
                return
            if path == "instance/service-accounts/default/token":
                body = {"access_token": ACCESS_TOKEN, "expires_in": 3599, "token_type": "Bearer"}
                self._send(200, json.dumps(body).encode())
            elif path == "instance/network-interfaces/0/ip":
                self._send(200, fake.internal_ip.encode())
            elif path == "instance/attributes/":
                args = parse_qs(query)
                with fake.changed:
                    if args.get("wait_for_change") == ["true"]:
                        last = args.get("last_etag", [""])[0]
                        timeout = float(args.get("timeout_sec", ["30"])[0])
                        fake.changed.wait_for(lambda: fake.etag != last, timeout=timeout)
                    attrs = json.dumps(fake.attributes).encode()
                    etag = fake.etag
                self._send(200, attrs, {"ETag": etag, "Content-Type": "application/json"})
            elif path.startswith("instance/attributes/"):
                key = path.removeprefix("instance/attributes/")
                if key in fake.attributes:
                    self._send(200, fake.attributes[key].encode())
                else:
                    self._send(404, b"not found")
            else:
                self._send(404, b"not found")

        def _secret(self, name: str) -> None:
            if self.headers.get("Authorization") != f"Bearer {ACCESS_TOKEN}":
                self._send(401, b'{"error": {"code": 401}}')
                return
            if fake.secret_denials > 0 or time.monotonic() < fake.secret_denied_until:
                fake.secret_denials = max(0, fake.secret_denials - 1)
                self._send(403, b'{"error": {"code": 403, "status": "PERMISSION_DENIED"}}')
                return
            if fake.secret_status != 200:
                self._send(fake.secret_status, b'{"error": {"code": %d}}' % fake.secret_status)
                return
            body = {
                "name": f"{name}/versions/3",
                "payload": {"data": base64.b64encode(fake.secret_value).decode()},
            }
            self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    return Handler


@contextmanager
def fake_google(address: tuple[str, int] = ("127.0.0.1", 0)) -> Iterator[FakeGoogle]:
    fake = FakeGoogle()
    with serve_http(_handler(fake), address=address) as server:
        # a client gone at shutdown (a long poll of the watcher) is not an error of the fake
        server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        host, port = server.server_address[:2]
        fake.url = f"http://{host!s}" if port == 80 else base_url(server)
        try:
            yield fake
        finally:
            with fake.changed:
                fake.etag_counter += 1000  # release waiting long polls
                fake.changed.notify_all()


# ---- stub binaries ---------------------------------------------------------------------

# Every stub first appends its argv, shell-quoted, to $STUB_DIR/calls.log.
_RECORD = r"""
{ printf "%s" "$(basename "$0")"; for a in "$@"; do printf " %q" "$a"; done; echo; } \
  >>"$STUB_DIR/calls.log"
"""

STUBS: dict[str, str] = {
    "docker": r"""
case "$1" in
  login) cat >>"$STUB_DIR/docker-login.stdin"; echo "Login Succeeded" ;;
  pull)
    n=$(cat "$STUB_DIR/pull-denials" 2>/dev/null || echo 0)
    if [ "$n" -gt 0 ]; then
      echo $((n - 1)) >"$STUB_DIR/pull-denials"
      echo "Error response from daemon: Head \"https://${@: -1}\": denied: Permission" \
        "\"artifactregistry.repositories.downloadArtifacts\" denied on resource" >&2; exit 1
    fi
    n=$(cat "$STUB_DIR/pull-failures" 2>/dev/null || echo 0)
    if [ "$n" -gt 0 ]; then
      echo $((n - 1)) >"$STUB_DIR/pull-failures"
      echo "Error response from daemon: unavailable" >&2; exit 1
    fi
    echo "${@: -1}" >>"$STUB_DIR/images" ;;
  image)
    case "$2" in
      inspect) grep -qxF -- "${@: -1}" "$STUB_DIR/images" 2>/dev/null ;;
      ls) grep -F -- "${@: -1}@" "$STUB_DIR/images" 2>/dev/null || true ;;
      rm) grep -vxF -- "$3" "$STUB_DIR/images" >"$STUB_DIR/images.new" || true
          mv "$STUB_DIR/images.new" "$STUB_DIR/images" ;;
    esac ;;
  info) echo "27.5.1" ;;
  run)
    case " $* " in
      *" sh "*)  # the image's uid:gid; "none" = an image without a shell
        if grep -qx none "$STUB_DIR/image-user" 2>/dev/null; then
          echo 'exec: "sh": executable file not found in $PATH' >&2; exit 127
        fi
        cat "$STUB_DIR/image-user" 2>/dev/null || echo "0:0" ;;
      *) if [ -f "$STUB_DIR/run-fails" ]; then echo "download failed" >&2; exit 1; fi ;;
    esac ;;
esac
""",
    "systemctl": r"""
args=(); for a in "$@"; do case "$a" in -*) ;; *) args+=("$a") ;; esac; done
mkdir -p "$STUB_DIR/enabled" "$STUB_DIR/active"
case "${args[0]}" in
  is-enabled) [ -e "$STUB_DIR/enabled/${args[1]}" ] ;;
  is-active) [ -e "$STUB_DIR/active/${args[1]}" ] ;;
  enable) touch "$STUB_DIR/enabled/${args[1]}" ;;
  start|restart) touch "$STUB_DIR/active/${args[1]}" ;;
  stop) rm -f "$STUB_DIR/active/${args[1]}" ;;
esac
""",
    "nvidia-smi": r"""
if [ -e "$STUB_DIR/no-driver" ]; then
  echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver." >&2; exit 9
fi
echo "Tesla T4, 580.95.05"
""",
    "nvidia-ctk": r"""
for a in "$@"; do case "$a" in --config=*) cfg="${a#--config=}" ;; esac; done
mkdir -p "$(dirname "$cfg")"
echo '{"runtimes": {"nvidia": {"path": "nvidia-container-runtime"}}}' >"$cfg"
""",
    # apt 2.6: `apt-get update` exits 100 at once while the lists lock is held
    "apt-get": r"""
lock="$TEXT2IMG_ROOT/var/lib/apt/lists/lock"
probe='import fcntl, sys; fcntl.lockf(open(sys.argv[1], "a"), fcntl.LOCK_EX | fcntl.LOCK_NB)'
if [ -e "$lock" ] && ! python3 -c "$probe" "$lock" 2>/dev/null; then
  echo "E: Could not get lock $TEXT2IMG_ROOT/var/lib/apt/lists/lock" >&2; exit 100
fi
umask >>"$STUB_DIR/apt-get.umask"
for a in "$@"; do
  case "$a" in
    docker.io) cp "$STUB_DIR/available/docker" "$STUB_DIR/bin/docker" ;;
    nvidia-container-toolkit) cp "$STUB_DIR/available/nvidia-ctk" "$STUB_DIR/bin/nvidia-ctk" ;;
  esac
done
""",
    "uname": "echo 6.8.0-1019-gcp\n",
    # what the DLVM has installed: the kernel, its meta packages, the driver, and others
    "dpkg-query": r"""
printf 'ii %s\n' linux-image-6.8.0-1019-gcp linux-modules-6.8.0-1019-gcp linux-gcp \
  linux-image-6.8.0-1015-gcp nvidia-driver-580-server libnvidia-compute-580-server \
  cuda-drivers-580 openssl python3 docker-ce-cli |
  sed 's/^ii linux-image-6.8.0-1015/rc linux-image-6.8.0-1015/'  # removed, config left
""",
    "apt-mark": r"""
case "$1" in
  showhold) cat "$STUB_DIR/held" 2>/dev/null || true ;;
  hold) shift; printf '%s\n' "$@" >>"$STUB_DIR/held" ;;
esac
""",
    # runs the command after `--` (the prefetch: xargs cat of the weights), output dropped
    "systemd-run": r"""
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do shift; done; shift
"$@" >/dev/null
""",
    "gpg": r"""
out=; prev=; for a in "$@"; do [ "$prev" = "-o" ] && out=$a; prev=$a; done
echo "dearmored" >"$out"
""",
    "logger": r"""
shift 2; [ "$1" = "--" ] && shift; printf '%s\n' "$*" >>"$STUB_DIR/journal.log"
""",
    # the real curl, with its argv recorded: no token may appear on a command line
    "curl": 'exec /usr/bin/curl "$@"\n',
    "poweroff": "",
    "google_metadata_script_runner": "",
}


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Sandbox:
    """One VM's disk (root), stub binaries (stub/bin) and the fake Google endpoints."""

    tmp: Path
    google: FakeGoogle
    env_extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = self.tmp / "root"
        self.stub = self.tmp / "stub"
        self.bin = self.stub / "bin"
        available = self.stub / "available"
        for d in (self.root, self.root / "dev", self.bin, available):
            d.mkdir(parents=True, exist_ok=True)
        for name, body in STUBS.items():
            script = "#!/bin/bash" + _RECORD + body
            for where in (self.bin, available):
                path = where / name
                path.write_text(script)
                path.chmod(0o755)

    def env(self) -> dict[str, str]:
        return {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "HOME": str(self.tmp),
            "STUB_DIR": str(self.stub),
            "TEXT2IMG_ROOT": str(self.root),
            "GCE_METADATA_HOST": self.google.host,
            "TEXT2IMG_SECRETMANAGER_ENDPOINT": self.google.url,
            "TEXT2IMG_NVIDIA_REPO": self.google.url + "/nvidia",
            "TEXT2IMG_DRIVER_TIMEOUT": "2",
            "TEXT2IMG_DRIVER_POLL": "0.2",
            "TEXT2IMG_RETRY_ATTEMPTS": "3",
            "TEXT2IMG_RETRY_DELAY": "0",
            "TEXT2IMG_NET_TIMEOUT": "30",
            "TEXT2IMG_IAM_TIMEOUT": "3",
            "TEXT2IMG_IAM_DELAY": "1",
            "TEXT2IMG_PORT_WAIT": "1",
            **self.env_extra,
        }

    def run(self) -> Result:
        """Run the `startup-script` attribute, as the guest agent does."""
        script = self.tmp / "startup-script"
        script.write_text(self.google.attributes["startup-script"])
        proc = subprocess.run(
            ["bash", str(script)],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    # ---- what the stubs recorded -----------------------------------------------------

    def calls(self, name: str | None = None) -> list[list[str]]:
        log = self.stub / "calls.log"
        lines = log.read_text().splitlines() if log.exists() else []
        out = [shlex.split(line) for line in lines]
        return [c for c in out if name is None or c[0] == name]

    def clear_calls(self) -> None:
        (self.stub / "calls.log").unlink(missing_ok=True)

    def journal(self) -> str:
        path = self.stub / "journal.log"
        return path.read_text() if path.exists() else ""

    def path(self, vm_path: str) -> Path:
        return self.root / vm_path.lstrip("/")

    def set_pull_failures(self, n: int) -> None:
        (self.stub / "pull-failures").write_text(f"{n}\n")

    def set_pull_denials(self, n: int) -> None:
        """`docker pull` answers Artifact Registry's 403 ("denied: Permission ...") n times."""
        (self.stub / "pull-denials").write_text(f"{n}\n")

    def remove_stub(self, name: str) -> None:
        (self.bin / name).unlink()

    def flag(self, name: str) -> None:
        (self.stub / name).touch()

    def unflag(self, name: str) -> None:
        (self.stub / name).unlink(missing_ok=True)


def systemctl_verbs(calls: list[list[str]]) -> list[tuple[str, str]]:
    """(verb, unit) for each systemctl call, options dropped."""
    out = []
    for call in calls:
        args = [a for a in call[1:] if not a.startswith("--")]
        out.append((args[0], args[1] if len(args) > 1 else ""))
    return out


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def all_output(sandbox: Sandbox, *results: Result) -> str:
    """Everything a person could read: stdout, stderr, the journal, the recorded argv."""
    parts = [r.stdout + r.stderr for r in results]
    parts.append(sandbox.journal())
    calls = sandbox.stub / "calls.log"
    parts.append(calls.read_text() if calls.exists() else "")
    return "\n".join(parts)


def environ_without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}
