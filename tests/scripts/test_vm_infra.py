"""`scripts/vm preflight` and `scripts/vm move` against a fake of Google's REST APIs
(tests/fakes/gcp_project.py) through the real google-cloud-compute clients, with a stub
`pulumi` that answers `config --json` / `stack output` and records `config set`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from infra.apis import required_apis
from infra.config import read_settings
from infra.google_apis import ENDPOINT_ENV
from tests.fakes.gcp_project import FakeGoogleProject

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "t2i-test-project"
VM, DISK = "t2i-dev-gpu", "t2i-dev-boot"


@dataclass
class Stack:
    fake: FakeGoogleProject
    bin_dir: Path
    log: Path
    config: dict[str, str]

    def write_stub(self) -> None:
        outputs = {"project": PROJECT, "zone": "asia-northeast1-a", "instance_name": VM}
        config = {f"text2img:{k}": {"value": v, "secret": False} for k, v in self.config.items()}
        stub = self.bin_dir / "pulumi"
        stub.write_text(
            "#!/bin/bash\n"
            f'echo "$*" >> {self.log}\n'
            'case "$*" in\n'
            f"  'stack output --json --show-secrets'*) echo '{json.dumps(outputs)}' ;;\n"
            f"  'config --json'*) echo '{json.dumps(config)}' ;;\n"
            "  'config set '*|version) ;;\n"
            '  *) echo "unexpected: $*" >&2; exit 3 ;;\n'
            "esac\n"
        )
        stub.chmod(0o755)

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    with FakeGoogleProject() as fake:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        s = Stack(fake, bin_dir, tmp_path / "pulumi.log", {"project": PROJECT})
        s.write_stub()
        monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
        monkeypatch.setenv(ENDPOINT_ENV, fake.endpoint)
        for name in ("PROJECT", "ZONE", "INSTANCE", "URL", "TOKEN_FILE"):
            monkeypatch.delenv(f"TEXT2IMG_VM_{name}", raising=False)
        yield s


def run(vm: ModuleType, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = vm.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def ready(stack: Stack) -> Stack:
    """A project where an earlier `pulumi up` enabled every API the program needs."""
    spec = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    values = {
        k: str(d["default"]).lower() if isinstance(d["default"], bool) else str(d["default"])
        for k, d in spec.items()
        if "default" in d
    } | {"project": PROJECT}
    stack.fake.enabled_apis |= set(required_apis(read_settings(values.get)))
    return stack


def test_preflight_clean_project_says_so_in_one_line(
    vm_module: ModuleType, ready: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(vm_module, capsys, "preflight")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "preflight: project t2i-test-project is ready for 1 x nvidia-tesla-t4 in "
        "asia-northeast1-a (billing, APIs, quota, zone and organization policies checked)"
    ]
    assert ready.calls() == ["config --json"]


def test_preflight_reads_the_stack_config_and_lists_one_fix_per_problem(
    vm_module: ModuleType, ready: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    ready.config.update({"zone": "asia-northeast1-b", "spot": "true"})
    ready.write_stub()
    ready.fake.project_quotas["GPUS_ALL_REGIONS"] = (0.0, 0.0)
    code, out, err = run(vm_module, capsys, "preflight")
    assert code == 1, err
    lines = out.splitlines()
    assert lines[0].startswith("problem: quota GPUS_ALL_REGIONS in all regions is 0, 1 needed")
    assert lines[1] == (
        "problem: zone asia-northeast1-b does not offer nvidia-tesla-t4: `pulumi config set "
        "zone asia-northeast1-a` (zones with it: asia-northeast1-a, asia-northeast1-c)"
    )
    assert lines[2] == "preflight: 2 problem(s) to fix, 0 note(s)"
    # --zone checks another zone without changing the config
    code, out, _ = run(vm_module, capsys, "preflight", "--zone", "asia-northeast1-c")
    assert "zone asia-northeast1-c does not offer" not in out


def test_preflight_without_a_project_names_the_key(
    vm_module: ModuleType, stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    stack.config.clear()
    stack.write_stub()
    code, _, err = run(vm_module, capsys, "preflight")
    assert code == 1
    assert "text2img:project: not set (`pulumi config set project <value>`" in err
    assert "Traceback" not in err


def test_move_snapshots_the_disk_and_adopts_the_new_zone(
    vm_module: ModuleType, stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    stack.fake.add_vm(VM, "asia-northeast1-a", DISK, status="RUNNING")
    code, out, err = run(vm_module, capsys, "move", "--zone", "asia-northeast1-c")
    assert code == 0, err
    assert stack.fake.instances[VM]["status"] == "TERMINATED"  # stopped first
    [snap] = stack.fake.snapshots.values()
    assert snap["name"].startswith("t2i-dev-boot-move-")
    assert snap["storageLocations"] == ["asia-northeast1"]
    assert snap["sourceDisk"].endswith("/zones/asia-northeast1-a/disks/t2i-dev-boot")
    assert f"snapshot {snap['name']} is ready: 38.0 GB stored" in out
    assert stack.calls()[-2:] == [
        "config set zone asia-northeast1-c",
        f"config set bootDiskSnapshot {snap['name']}",
    ]
    assert "now run `pulumi up`" in out
    assert stack.fake.calls["stop"] == 1


def test_move_refuses_a_zone_without_the_gpu_before_touching_anything(
    vm_module: ModuleType, stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    stack.fake.add_vm(VM, "asia-northeast1-a", DISK, status="RUNNING")
    code, _, err = run(vm_module, capsys, "move", "--zone", "asia-northeast1-b")
    assert code == 1
    assert err.strip() == (
        "scripts/vm move: error: asia-northeast1-b does not offer nvidia-tesla-t4; "
        "`scripts/vm preflight --zone asia-northeast1-b` lists the region's zones that do"
    )
    assert stack.fake.calls["stop"] == 0
    assert stack.fake.snapshots == {}


@pytest.mark.parametrize(
    ("zone", "message"),
    [
        ("asia-northeast1-a", "the VM is already in asia-northeast1-a"),
        ("us-central1-a", "us-central1-a is not in region asia-northeast1"),
    ],
)
def test_move_stays_in_the_region(
    vm_module: ModuleType, stack: Stack, capsys: pytest.CaptureFixture[str], zone: str, message: str
) -> None:
    stack.fake.add_vm(VM, "asia-northeast1-a", DISK)
    code, _, err = run(vm_module, capsys, "move", "--zone", zone)
    assert code == 1
    assert message in err
    assert stack.fake.calls["snapshot_create"] == 0


def test_a_failed_snapshot_changes_no_config(
    vm_module: ModuleType, stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    stack.fake.add_vm(VM, "asia-northeast1-a", DISK)
    stack.fake.snapshot_error = "Quota 'SNAPSHOTS' exceeded."
    code, _, err = run(vm_module, capsys, "move", "--zone", "asia-northeast1-c")
    assert code == 1
    assert "the snapshot of t2i-dev-boot failed" in err
    assert "SNAPSHOTS" in err
    assert not [c for c in stack.calls() if c.startswith("config set")]


def test_move_without_config_prints_the_commands(
    vm_module: ModuleType, stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    stack.fake.add_vm(VM, "asia-northeast1-a", DISK)
    code, out, err = run(vm_module, capsys, "move", "--zone", "asia-northeast1-c", "--no-config")
    assert code == 0, err
    name = next(iter(stack.fake.snapshots))
    assert (
        f"now run: pulumi config set zone asia-northeast1-c && pulumi config set "
        f"bootDiskSnapshot {name} && pulumi up"
    ) in out
    assert stack.fake.calls["stop"] == 0  # it was already stopped
