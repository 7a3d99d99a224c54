"""Config: defaults come from Pulumi.yaml; every invalid value fails naming its key."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from infra_harness import PROJECT_FILE, project_defaults, run_program

from infra.config import ConfigError


def test_every_key_is_declared_with_type_and_description() -> None:
    spec = yaml.safe_load(PROJECT_FILE.read_text())
    assert spec["name"] == "text2img"
    assert spec["main"] == "infra/"
    assert spec["runtime"]["options"]["virtualenv"] == ".venv"
    types = {"string": str, "integer": int, "boolean": bool}
    for key, decl in spec["config"].items():
        assert decl["type"] in types, key
        assert len(decl["description"]) > 20, key
        if "default" in decl:
            assert isinstance(decl["default"], types[decl["type"]]), key
    assert "default" not in spec["config"]["project"]  # the one key a user must set


def test_defaults() -> None:
    defaults = project_defaults()
    assert defaults["region"] == "asia-northeast1"
    assert defaults["zone"] == "asia-northeast1-a"
    assert defaults["machineType"] == "n1-standard-4"
    assert (defaults["gpuType"], defaults["gpuCount"], defaults["spot"]) == (
        "nvidia-tesla-t4",
        1,
        False,
    )
    assert defaults["imageFamily"].startswith("common-cu129-")
    assert defaults["idleMinutes"] == 20


INVALID: list[tuple[str, Any, str]] = [
    ("zone", "us-central1-a", "is not a zone of region"),
    ("region", "tokyo", "is not a region"),
    ("machineType", "e2-standard-4", "N1"),
    ("machineType", "g1-small", "N1"),
    ("gpuType", "nvidia-l4", "is not one of"),
    ("gpuCount", 3, "1, 2 or 4"),
    ("gpuCount", "two", "not an integer"),
    ("spot", "maybe", "true or false"),
    ("idleMinutes", 2, "outside 5-1440"),
    ("idleMinutes", 5000, "outside 5-1440"),
    ("bootGraceMinutes", 1, "outside 10-240"),
    ("diskSizeGb", 10, "outside 50-2000"),
    ("servicePort", 80, "outside 1024-65535"),
    ("modelCacheDir", "relative/dir", "absolute path"),
    ("scheduleStart", "every morning", "5-field cron"),
    ("scheduleStop", "0 25 * * *", "outside 0-23"),
    ("scheduleTimeZone", "Mars/Olympus", "IANA time zone"),
    ("serviceImage", "asia-northeast1-docker.pkg.dev/p/r/text2img:latest", "by digest"),
    ("gatewayImage", "text2img-gateway@sha256:abc", "by digest"),
    ("buildMachineType", "e2-standard-2", "is not one of"),
    ("gatewayMaxInstances", 0, "outside 1-10"),
    ("subnetCidr", "8.8.8.0/24", "private range"),
    ("gatewayEgressCidr", "10.20.0.0/26", "overlaps subnetCidr"),
    ("gatewayEgressCidr", "10.20.9.0/28", "smaller than /26"),
    ("project", "Bad_Project", "is not a project id"),
    ("imageFamily", "Not A Family", "image family"),
]


@pytest.mark.parametrize(("key", "value", "why"), INVALID, ids=[f"{k}={v}" for k, v, _ in INVALID])
def test_invalid_value_fails_naming_the_key(key: str, value: Any, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        run_program("dev", {key: value})
    message = str(info.value)
    assert f"text2img:{key}:" in message
    assert why in message
    assert message.splitlines()[1].strip().startswith(f"text2img:{key}:")  # named first


def test_missing_project_says_how_to_set_it() -> None:
    with pytest.raises(
        ConfigError, match=r"text2img:project: not set \(`pulumi config set project"
    ):
        run_program("dev", project=None)


def test_several_problems_are_reported_together() -> None:
    with pytest.raises(ConfigError) as info:
        run_program("dev", {"idleMinutes": 1, "gpuCount": 8})
    assert "text2img:idleMinutes" in str(info.value)
    assert "text2img:gpuCount" in str(info.value)


def test_missing_startup_script_fails_clearly(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from infra.metadata import StartupScriptError

    monkeypatch.setenv("TEXT2IMG_INFRA_STARTUP_SCRIPT", str(tmp_path / "nope.sh"))
    with pytest.raises(StartupScriptError, match="not found"):
        run_program("dev")


def test_oversized_startup_script_fails(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from infra.metadata import StartupScriptError

    big = tmp_path / "big.sh"
    big.write_text("#!/bin/bash\n" + "#" * (256 * 1024))
    monkeypatch.setenv("TEXT2IMG_INFRA_STARTUP_SCRIPT", str(big))
    with pytest.raises(StartupScriptError, match="limited to 262144 bytes"):
        run_program("dev")


@pytest.mark.slow
def test_zone_without_the_gpu_warns(plan_for) -> None:
    assert plan_for().warnings == []
    plan = plan_for(zone="asia-northeast1-b")
    assert any("text2img:zone: asia-northeast1-b is not known to offer" in w for w in plan.warnings)
    assert plan.outputs["zone"] == "asia-northeast1-b"  # a warning, not an error
