"""The model the VM serves is declared by its engine spec alone (issue 22.1): the allowed
`model` values, the boot disk size and the boot-time prefetch list come from
text2img.engines.registry, so a new engine needs no change under infra/."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from typing import Any

import pytest
from infra_harness import run_program

from infra.config import ConfigError
from infra.models import DISK_BASE_GB, DISK_MIN_AUTO_GB, auto_disk_size_gb
from text2img.engines import registry
from text2img.engines.base import EngineSpec

DISK = "gcp:compute/disk:Disk"
INSTANCE = "gcp:compute/instance:Instance"
THIRD = "third-test-engine"


@dataclass(frozen=True)
class _ThirdSpec(EngineSpec):
    def settings(self, **options: Any) -> Any:
        raise NotImplementedError  # infra never builds settings


def _spec(name: str, *, gb: float, random_weights: bool = False) -> _ThirdSpec:
    return _ThirdSpec(
        name=name,
        family="third",
        title="a test-only engine registered through the registry",
        licence="none",
        random_weights=random_weights,
        sizes=("512x512",),
        default_size="512x512",
        options=(),
        download_bytes=int(gb * 1e9),
        prefetch=("third/unet.safetensors", "third/text-*/model.safetensors"),
    )


@pytest.fixture
def third_engine(monkeypatch: pytest.MonkeyPatch) -> str:
    """A 41 GB engine and its random-weight twin, registered the way a real one is: a
    torch-free spec module named by a registry line."""
    module = types.ModuleType("t2i_third_engine_spec")
    module.THIRD = _spec(THIRD, gb=41.0)  # type: ignore[attr-defined]
    module.TINY_THIRD = _spec("tiny-third", gb=0.0, random_weights=True)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(
        registry.ENGINES,
        THIRD,
        registry.Registration(f"{module.__name__}:THIRD", "t2i_third_engine:load", "x"),
    )
    monkeypatch.setitem(
        registry.ENGINES,
        "tiny-third",
        registry.Registration(f"{module.__name__}:TINY_THIRD", "t2i_third_engine:load"),
    )
    return THIRD


def test_a_third_engine_is_accepted_and_sizes_the_disk_without_infra_changes(
    third_engine: str,
) -> None:
    plan = run_program("dev", {"model": third_engine})
    # 80 GB of OS and images + three times 41 GB of weights = 203 -> 210 GB
    assert plan.one(DISK).inputs["size"] == 210
    metadata = plan.one(INSTANCE).inputs["metadata"]
    assert metadata["text2img-model"] == third_engine
    assert metadata["text2img-prefetch"] == (
        "third/unet.safetensors\nthird/text-*/model.safetensors"
    )
    assert plan.warnings == []
    # its random-weight twin draws noise: not a model the VM serves
    with pytest.raises(ConfigError, match=r"text2img:model: 'tiny-third' is not one of .*"):
        run_program("dev", {"model": "tiny-third"})


def test_an_unknown_model_names_the_registered_ones(third_engine: str) -> None:
    with pytest.raises(ConfigError) as info:
        run_program("dev", {"model": "dalle"})
    message = str(info.value)
    assert f"'dalle' is not one of glide, sdxl-lightning, {third_engine}" in message
    assert "diskSizeGb" not in message  # auto size is not reported for a bad model


@pytest.mark.parametrize("model", ["glide", "sdxl-lightning"])
def test_disk_size_and_prefetch_come_from_the_spec(model: str) -> None:
    spec = registry.get_spec(model)
    plan = run_program("dev", {"model": model})
    gb = DISK_BASE_GB + 3 * spec.download_bytes / 1e9
    size = plan.one(DISK).inputs["size"]
    assert size == max(DISK_MIN_AUTO_GB, auto_disk_size_gb(model))
    assert gb <= size < gb + 10
    assert size % 10 == 0
    prefetch = plan.one(INSTANCE).inputs["metadata"]["text2img-prefetch"].split("\n")
    assert prefetch == list(spec.prefetch)
    assert prefetch != [""]


def test_small_models_get_the_minimum_disk() -> None:
    assert auto_disk_size_gb("glide") == DISK_MIN_AUTO_GB  # 80 + 3 x 4.7 = 94.1


def test_sdxl_steps_size_the_disk_and_reach_the_vm() -> None:
    """sdxlSteps enables the 2- and 8-step UNets: 2 x 5.14 GB more weights, the automatic
    disk follows, and the VM gets TEXT2IMG_SDXL_STEPS for the download and the service."""
    four = run_program("dev", {"model": "sdxl-lightning"})
    all_steps = run_program("dev", {"model": "sdxl-lightning", "sdxlSteps": "2,4,8"})
    assert four.one(DISK).inputs["size"] == 110  # 80 + 3 x 7.13 GB = 101.4 -> 110
    assert all_steps.one(DISK).inputs["size"] == 140  # 80 + 3 x 17.41 GB = 132.2 -> 140
    assert four.one(INSTANCE).inputs["metadata"]["text2img-model-env"] == ("TEXT2IMG_SDXL_STEPS=4")
    assert all_steps.one(INSTANCE).inputs["metadata"]["text2img-model-env"] == (
        "TEXT2IMG_SDXL_STEPS=2,4,8"
    )
    # GLIDE reads no deployment variable: nothing is passed on
    glide = run_program("dev", {"model": "glide", "sdxlSteps": "2,4,8"})
    assert glide.one(INSTANCE).inputs["metadata"]["text2img-model-env"] == ""


@pytest.mark.parametrize("value", ["3", "2,8", "four", "2,4,16"])
def test_bad_sdxl_steps_stop_the_preview_naming_the_key(value: str) -> None:
    with pytest.raises(ConfigError, match=r"text2img:sdxlSteps: .*subset of 2,4,8 that includes 4"):
        run_program("dev", {"model": "sdxl-lightning", "sdxlSteps": value})


def test_the_cloud_run_backend_refuses_other_step_counts() -> None:
    config = {"model": "sdxl-lightning", "backend": "cloudrun", "sdxlSteps": "2,4,8"}
    with pytest.raises(ConfigError, match=r"text2img:sdxlSteps: .*bakes the 4-step UNet only"):
        run_program("dev", config)
