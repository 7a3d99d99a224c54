"""A VM twin: our systemd/ files booted under a real systemd as PID 1.

The twin's disk is an overlay: the cached Debian root (rootfs.py) below, the test's own
directory above (so a second boot of the same twin is a wake with the same disk). It
boots with `unshare -p -f -m` (private PID and mount namespaces; the network is the
host's, so loopback servers are reachable) and `chroot ROOT env -i container=other
/lib/systemd/systemd --system`; `nsenter -t PID -p -m chroot ROOT systemctl ...` talks to
it, `systemctl poweroff` inside ends it. Only the processes this module started are ever
killed, by PID, and only when a twin does not power off by itself."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.vm_twin import profile
from tests.vm_twin.rootfs import root_path


class TwinError(AssertionError):
    """The twin did not do what the test waited for; the message has its journal tail."""


class Twin:
    def __init__(self, tmp: Path, *, venv: str, repo: str) -> None:
        self.tmp = tmp
        self.disk = tmp / "upper"
        self.work = tmp / "work"
        self.mnt = tmp / "mnt"
        for d in (self.disk, self.work, self.mnt):
            d.mkdir(parents=True, exist_ok=True)
        self.venv = venv
        self.repo = repo
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0  # systemd, PID 1 inside
        self.boots = 0
        self.booted_at = 0.0

    # ---- life cycle -----------------------------------------------------------------

    def boot(self, timeout: float = 60) -> None:
        assert not self.running(), "the twin is already running"
        lower = root_path()
        binds = "\n".join(
            f"mount --bind {shlex.quote(p)} {shlex.quote(str(self.mnt) + p)}\n"
            f"mount -o remount,bind,ro {shlex.quote(str(self.mnt) + p)}"
            for p in profile.bind_paths(self.venv, self.repo)
        )
        script = self.tmp / "boot.sh"
        script.write_text(
            "set -e\n"
            f"mount -t overlay overlay -o lowerdir={lower},upperdir={self.disk},"
            f"workdir={self.work} {self.mnt}\n"
            f"{binds}\n"
            f"mount -t proc proc {self.mnt}/proc\n"
            f"exec chroot {self.mnt} env -i container=other /lib/systemd/systemd --system\n"
        )
        self.boots += 1
        # the twin shares the host's kernel: boot id and monotonic clock are the host's,
        # so "this boot" in its journal is everything after this moment
        self.booted_at = time.monotonic()
        console = (self.tmp / f"boot{self.boots}.console").open("wb")
        self.proc = subprocess.Popen(
            ["unshare", "-p", "-f", "-m", "--propagation", "private", "sh", str(script)],
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            try:
                kids = children.read_text().split()
            except FileNotFoundError:
                kids = []
            if kids and Path(f"/proc/{kids[0]}/exe").resolve().name == "systemd":
                self.pid = int(kids[0])
                break
            if self.proc.poll() is not None:
                raise TwinError(f"the twin did not boot: {self.console()}")
            time.sleep(0.1)
        else:
            raise TwinError("systemd did not start in the twin")
        self.wait_for(
            lambda: (
                self.sh("systemctl is-system-running").stdout.strip()
                in ("running", "degraded", "starting")
            ),
            timeout,
            "systemd to answer",
        )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_off(self, timeout: float) -> bool:
        """True when the twin powered itself off within timeout seconds."""
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def poweroff(self, timeout: float = 60) -> None:
        if not self.running():
            return
        self.sh("systemctl poweroff --no-block")
        if not self.wait_off(timeout):
            self.kill()

    def kill(self) -> None:
        """The fallback: kill our systemd (PID 1 inside: the namespace goes with it)."""
        if self.running():
            assert self.proc is not None
            if self.pid:
                os.kill(self.pid, signal.SIGKILL)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    # ---- talking to it ----------------------------------------------------------------

    def sh(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a shell command inside the twin (its PID and mount namespaces, its root)."""
        assert self.pid, "the twin is not running"
        return subprocess.run(
            [
                "nsenter",
                "-t",
                str(self.pid),
                "-p",
                "-m",
                "chroot",
                str(self.mnt),
                "/usr/bin/env",
                "-i",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "sh",
                "-c",
                command,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def show(self, unit: str, prop: str) -> str:
        return self.sh(f"systemctl show -P {prop} {unit}").stdout.strip()

    def journal(self, *args: str, this_boot: bool = False) -> str:
        """The twin's journal: from inside while it runs, from its disk when it is off;
        with this_boot, only the lines of the latest boot."""
        if self.running():
            text = self.sh("journalctl --no-pager -o short-monotonic " + shlex.join(args)).stdout
        else:
            journal = self.disk / "var/log/journal"
            text = subprocess.run(
                ["journalctl", "--no-pager", "-o", "short-monotonic", "-D", str(journal), *args],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
        if not this_boot:
            return text
        out = []
        for line in text.splitlines():
            stamp = line[1:].split("]", 1)[0].strip() if line.startswith("[") else ""
            try:
                if float(stamp) >= self.booted_at - 1:
                    out.append(line)
            except ValueError:
                continue
        return "\n".join(out)

    def file(self, path: str) -> str:
        """A file the twin wrote (its disk's upper layer)."""
        p = self.disk / path.lstrip("/")
        return p.read_text() if p.exists() else ""

    def console(self) -> str:
        return "".join(
            p.read_text(errors="replace") for p in sorted(self.tmp.glob("boot*.console"))
        )

    def wait_for(
        self, check: Callable[[], bool], timeout: float, what: str, *, poll: float = 0.5
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            if not self.running():
                raise TwinError(f"the twin powered off while waiting for {what}\n{self.tail()}")
            time.sleep(poll)
        raise TwinError(f"timed out after {timeout:g}s waiting for {what}\n{self.tail()}")

    def tail(self, lines: int = 60) -> str:
        text = self.journal()
        return "\n".join(text.splitlines()[-lines:])
