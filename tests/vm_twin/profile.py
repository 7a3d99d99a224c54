"""The Deep Learning VM profile of the twin: the units and programs a
`common-cu129-ubuntu-2204-nvidia-580` VM has that matter to our boot, as stand-ins.

- google-startup-scripts.service with the guest agent's ordering
  (GoogleCloudPlatform/guest-agent, google-startup-scripts.service: Wants/After
  network-online.target, Before=apt-daily.service, oneshot, WantedBy=multi-user.target);
  its runner fetches and runs the metadata's startup-script.
- jupyter.service enabled at boot in /usr/lib/systemd/system (a package's unit),
  listening on the service port on every address (8080 on the image; the twin uses the
  port the test picked).
- Debian's own apt-daily.timer/apt-daily-upgrade.timer (the same units as Ubuntu's);
  apt-daily-upgrade.service runs at boot, as a persistent timer's catch-up run does on a
  first boot from an old image; their services run a stand-in of unattended-upgrade
  (standins/vmtwin-upgrade).
  unattended-upgrades.service as on Ubuntu (a long-running shutdown helper).
- docker.service, /usr/bin/docker, nvidia-smi, nvidia-ctk and the runner (standins/).
- /etc/hosts: metadata.google.internal on the loopback address of the fake metadata server.

The image's package holds are the root's dpkg database (rootfs.DLVM_PACKAGES)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

STANDINS = Path(__file__).with_name("standins")

GOOGLE_STARTUP_SCRIPTS = """\
[Unit]
Description=Google Compute Engine Startup Scripts
Wants=network-online.target rsyslog.service
After=network-online.target rsyslog.service google-guest-agent.service
Before=apt-daily.service

[Service]
Type=oneshot
ExecStart=/usr/bin/google_metadata_script_runner startup
KillMode=process
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"""

JUPYTER = """\
[Unit]
Description=Jupyter Notebook (stand-in of the Deep Learning VM's)
After=network.target

[Service]
ExecStart=/usr/bin/python3 -m http.server {port} --bind 0.0.0.0
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
"""

# a program of the user's (not Jupyter) that holds the port
SQUATTER = """\
[Unit]
Description=some other program on the service port (up before Jupyter, which then fails)
Before=jupyter.service

[Service]
ExecStart=/usr/bin/python3 -m http.server {port} --bind 0.0.0.0
# started = listening
ExecStartPost=/bin/sh -c 'until ss -Hltn "sport = :{port}" | grep -q .; do sleep 0.1; done'

[Install]
WantedBy=multi-user.target
"""

UNATTENDED_UPGRADES = """\
[Unit]
Description=Unattended Upgrades Shutdown (stand-in)
After=network.target local-fs.target systemd-logind.service

[Service]
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
"""

# The twin shares the host's kernel, so /proc/uptime counts from the HOST's boot: autostop
# (which measures idle and grace from boot) reads the twin's own uptime instead.
BOOT_CLOCK = """\
[Unit]
Description=the twin's boot time (for its uptime)
DefaultDependencies=no
Before=sysinit.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'mkdir -p /run/vmtwin && cut -d" " -f1 /proc/uptime >/run/vmtwin/booted-at'

[Install]
WantedBy=sysinit.target
"""

AUTOSTOP_UPTIME = """\
[Service]
Environment=TEXT2IMG_AUTOSTOP_UPTIME_FILE=/run/vmtwin/uptime
ExecStartPre=/usr/local/sbin/vmtwin-uptime
"""

UPTIME_SCRIPT = """\
#!/bin/sh
# the twin's uptime: the kernel's, less what it was when the twin booted
awk -v b="$(cat /run/vmtwin/booted-at)" '{print $1 - b, 0}' /proc/uptime >/run/vmtwin/uptime
"""

DOCKER_SERVICE = """\
[Unit]
Description=Docker Application Container Engine (stand-in)

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true

[Install]
WantedBy=multi-user.target
"""

# By the wall clock, every 20 s: the twin's monotonic timers count from the host's boot.
TIMER_SOON = """\
[Timer]
OnCalendar=
OnCalendar=*:*:0/20
AccuracySec=1s
RandomizedDelaySec=0
"""

UPGRADE_STANDIN = """\
[Service]
ExecStart=
ExecStart=/usr/local/sbin/vmtwin-upgrade
ExecStartPre=
"""

APT_DAILY_STANDIN = """\
[Service]
ExecStart=
ExecStart=/bin/sleep 2
ExecStartPre=
"""


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def enable(disk: Path, unit: str, target: str = "multi-user.target", where: str = "etc") -> None:
    base = "/etc/systemd/system" if where == "etc" else "/usr/lib/systemd/system"
    link = disk / f"etc/systemd/system/{target}.wants/{unit}"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(f"{base}/{unit}")


def install(
    disk: Path,
    *,
    metadata_ip: str,
    port: int,
    venv: str,
    repo: str,
    knobs: dict[str, str],
    squatter: bool = False,
) -> None:
    """Write the profile onto the twin's disk (the overlay's upper directory)."""
    write(disk / "etc/hosts", f"127.0.0.1 localhost\n{metadata_ip} metadata.google.internal\n")
    write(disk / "etc/hostname", "text2img-twin\n")
    for name in ("docker", "nvidia-smi", "nvidia-ctk", "google_metadata_script_runner"):
        dest = disk / "usr/bin" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(STANDINS / name, dest)
        dest.chmod(0o755)
    write(disk / "usr/local/sbin/vmtwin-upgrade", (STANDINS / "vmtwin-upgrade").read_text(), 0o755)
    write(disk / "etc/vmtwin/docker.env", f"VENV={venv}\nREPO={repo}\n")
    (disk / "var/log/vmtwin").mkdir(parents=True, exist_ok=True)
    (disk / "var/log/journal").mkdir(parents=True, exist_ok=True)
    # the test knobs every unit sees (the VM uses the defaults), and the serial console
    env = " ".join(f'"{k}={v}"' for k, v in knobs.items())
    write(disk / "etc/systemd/system.conf.d/vmtwin.conf", f"[Manager]\nDefaultEnvironment={env}\n")

    system = disk / "etc/systemd/system"
    # no login prompts: the twin's /dev is the host's, its ttyS0 the host's serial port
    for getty in ("console-getty.service", "getty@tty1.service", "serial-getty@ttyS0.service"):
        mask = system / getty
        mask.parent.mkdir(parents=True, exist_ok=True)
        if not mask.is_symlink():
            mask.symlink_to("/dev/null")
    write(system / "google-startup-scripts.service", GOOGLE_STARTUP_SCRIPTS)
    enable(disk, "google-startup-scripts.service")
    write(system / "vmtwin-boot-clock.service", BOOT_CLOCK)
    enable(disk, "vmtwin-boot-clock.service", "sysinit.target")
    write(system / "text2img-autostop.service.d/vmtwin-uptime.conf", AUTOSTOP_UPTIME)
    write(disk / "usr/local/sbin/vmtwin-uptime", UPTIME_SCRIPT, 0o755)
    write(system / "docker.service", DOCKER_SERVICE)
    enable(disk, "docker.service")
    write(system / "unattended-upgrades.service", UNATTENDED_UPGRADES)
    enable(disk, "unattended-upgrades.service")
    write(disk / "usr/lib/systemd/system/jupyter.service", JUPYTER.format(port=port))
    enable(disk, "jupyter.service", where="lib")
    if squatter:
        write(system / "squatter.service", SQUATTER.format(port=port))
        enable(disk, "squatter.service")
    # apt-daily-upgrade runs at boot, alongside the startup script, as a persistent timer's
    # catch-up run does on a first boot from an old image (apt-daily, which the guest
    # agent's unit is ordered before, keeps its 12-hour random delay)
    enable(disk, "apt-daily-upgrade.service", where="lib")
    write(system / "apt-daily-upgrade.timer.d/vmtwin.conf", TIMER_SOON)
    write(system / "apt-daily-upgrade.service.d/vmtwin.conf", UPGRADE_STANDIN)
    write(system / "apt-daily.service.d/vmtwin.conf", APT_DAILY_STANDIN)
    # mount points for the venv, its Python and the repository (bound at the same paths)
    for path in {venv, repo, *python_homes(venv)}:
        (disk / path.lstrip("/")).mkdir(parents=True, exist_ok=True)


def python_homes(venv: str) -> list[str]:
    """The directories outside the venv that its Python needs (pyenv's or /usr)."""
    cfg = Path(venv, "pyvenv.cfg").read_text()
    home = next(
        line.split("=", 1)[1].strip() for line in cfg.splitlines() if line.startswith("home")
    )
    prefix = str(Path(home).parent)
    return [] if prefix in ("/usr", "/usr/local") else [prefix]


def bind_paths(venv: str, repo: str) -> list[str]:
    return sorted({venv, repo, *python_homes(venv)})


def host_python_ok(venv: str) -> str | None:
    """None, or why the venv's Python cannot run inside the twin."""
    homes = python_homes(venv)
    if homes:
        return None
    if not os.path.exists(os.path.realpath(Path(venv, "bin", "python"))):
        return f"{venv}/bin/python does not resolve"
    return None
