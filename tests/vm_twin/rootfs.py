"""The VM twin's root file system: a minimal Debian with systemd, built once with
debootstrap and cached under /var/cache/text2img-vmtwin/<key>/root.

The key is a hash of everything that goes into the root (suite, packages, the Deep
Learning VM profile's package names), so changing the list builds a new root. A
build is a step the tests run themselves (`python -m tests.vm_twin.rootfs` does it
alone); concurrent builders wait on one lock. The root is never written by a test:
each twin boots it as the lower layer of an overlay."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CACHE = Path(os.environ.get("TEXT2IMG_VMTWIN_CACHE", "/var/cache/text2img-vmtwin"))
SUITE = os.environ.get("TEXT2IMG_VMTWIN_SUITE", "bookworm")
MIRROR = os.environ.get("TEXT2IMG_VMTWIN_MIRROR", "http://deb.debian.org/debian")

# systemd as PID 1 and what our files call on a VM: python3 (autostop, metadata watch,
# startup.sh's JSON parsing), curl, ss (iproute2), ps/pkill (procps). The shared
# libraries after them are what the venv's Python and torch load from the system.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "curl",
    "ca-certificates",
    "iproute2",
    "procps",
    "libssl3",
    "libffi8",
    "libsqlite3-0",
    "libbz2-1.0",
    "liblzma5",
    "zlib1g",
    "libstdc++6",
    "libgomp1",
)

# Installed as empty dpkg packages, so the image's real package database holds the
# names a Deep Learning VM (common-cu129-ubuntu-2204-nvidia-580) has for its kernel and
# NVIDIA driver: real `dpkg-query` and `apt-mark hold` then work on them in the twin.
# KERNEL is what the twin's `uname -r` stand-in reports.
KERNEL = "6.8.0-1019-gcp"
DLVM_PACKAGES = (
    f"linux-image-{KERNEL}",
    f"linux-modules-{KERNEL}",
    f"linux-headers-{KERNEL}",
    f"linux-gcp-6.8-headers-{KERNEL.removesuffix('-gcp')}",
    "linux-gcp",
    "linux-image-gcp",
    "linux-headers-gcp",
    f"linux-modules-nvidia-580-server-{KERNEL}",
    "linux-modules-nvidia-580-server-gcp",
    "linux-objects-nvidia-580-server-" + KERNEL,
    "nvidia-driver-580-server",
    "nvidia-kernel-common-580-server",
    "nvidia-dkms-580",
    "libnvidia-compute-580-server",
    "nvidia-utils-580-server",
    "cuda-drivers-580",
    "nvidia-fabricmanager-580",
)
# and a few that must stay upgradable (not held)
DLVM_OTHER = ("openssl-dlvm-standin", "jupyterlab-dlvm-standin")


def key() -> str:
    data = json.dumps([SUITE, MIRROR, PACKAGES, DLVM_PACKAGES, DLVM_OTHER, 2])
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def root_path() -> Path:
    return CACHE / key() / "root"


def missing_tools() -> list[str]:
    """What this machine lacks to build or boot a twin (empty: nothing)."""
    need = ["debootstrap", "unshare", "nsenter", "chroot", "dpkg-deb", "mount"]
    missing = [tool for tool in need if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root (the twin mounts and unshares)")
    return missing


def _dummy_deb(workdir: Path, name: str) -> Path:
    pkg = workdir / name
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: 1.0-vmtwin\nArchitecture: all\n"
        "Maintainer: text2img VM twin <nobody@invalid>\n"
        "Description: stand-in for a Deep Learning VM package (no files)\n"
    )
    out = workdir / f"{name}.deb"
    subprocess.run(["dpkg-deb", "--build", str(pkg), str(out)], check=True, capture_output=True)
    return out


def build(target: Path, log=print) -> None:  # type: ignore[no-untyped-def]
    """debootstrap into target (a new directory), then the stand-in packages."""
    started = time.monotonic()
    log(f"vm twin: debootstrap {SUITE} into {target} (once; about 2 minutes)")
    cmd = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        SUITE,
        str(target),
        MIRROR,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        raise RuntimeError(f"debootstrap failed ({proc.returncode}):\n{tail}")
    with tempfile.TemporaryDirectory() as tmp:
        debs = [_dummy_deb(Path(tmp), n) for n in DLVM_PACKAGES + DLVM_OTHER]
        dest = target / "tmp" / "vmtwin-debs"
        dest.mkdir(parents=True)
        for deb in debs:
            shutil.copy(deb, dest)
        subprocess.run(
            ["chroot", str(target), "sh", "-c", "dpkg -i /tmp/vmtwin-debs/*.deb"],
            check=True,
            capture_output=True,
        )
        shutil.rmtree(dest)
    # apt's own downloads are not needed again
    shutil.rmtree(target / "var" / "cache" / "apt" / "archives", ignore_errors=True)
    (target / "var" / "cache" / "apt" / "archives" / "partial").mkdir(parents=True)
    log(f"vm twin: root built in {time.monotonic() - started:.0f}s")


def ensure_root(log=print) -> Path:  # type: ignore[no-untyped-def]
    """The cached root, built first if absent. Safe to call from parallel runs."""
    root = root_path()
    if (root.parent / "complete").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root.parent / "complete").exists():
            return root
        if root.exists():
            shutil.rmtree(root)
        partial = root.parent / "root.partial"
        if partial.exists():
            shutil.rmtree(partial)
        build(partial, log)
        partial.rename(root)
        (root.parent / "complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
    return root


if __name__ == "__main__":
    missing = missing_tools()
    if missing:
        sys.exit(f"vm twin: missing {', '.join(missing)}")
    print(ensure_root())
