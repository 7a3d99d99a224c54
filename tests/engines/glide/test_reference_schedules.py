"""Noise schedules, respaced arrays and the whole respacing sweep against the reference."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from glide_reference import read_json, read_tensors, reference_dir, require_dir

from text2img.engines.glide.schedules import make_schedule, named_betas, space_timesteps

FILE = "diffusion_schedules.json"
# reference field -> our Schedule attribute
FIELDS = {"respaced_betas": "betas"}


def _respacings() -> list[tuple[str, str]]:
    if not reference_dir():
        return []
    schedules = read_json(FILE)["schedules"]
    return [(name, r) for name, s in schedules.items() for r in s["respacings"]]


def _schedules() -> list[str]:
    return list(read_json(FILE)["schedules"]) if reference_dir() else []


def _close(actual: np.ndarray, expected: list[float] | np.ndarray) -> None:
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("name", _schedules())
def test_base_schedule(name):
    data = read_json(FILE)
    betas = named_betas(name, data["diffusion_steps"])
    _close(betas, data["schedules"][name]["betas"])
    _close(np.cumprod(1 - betas), data["schedules"][name]["alphas_cumprod"])
    tensors = read_tensors("diffusion_schedules.safetensors")
    _close(betas, tensors[f"{name}.betas"].numpy())


@pytest.mark.parametrize(("name", "respacing"), _respacings())
def test_respaced_arrays(name, respacing):
    data = read_json(FILE)
    expected = data["schedules"][name]["respacings"][respacing]
    schedule = make_schedule(name, respacing, data["diffusion_steps"])
    assert schedule.timestep_map.tolist() == expected["kept_timesteps"]
    assert schedule.num_steps == expected["num_steps"]
    for field, values in expected.items():
        if field in ("kept_timesteps", "num_steps"):
            continue
        _close(getattr(schedule, FIELDS.get(field, field)), values)
    tensors = read_tensors("diffusion_schedules.safetensors")
    prefix = f"{name}.{respacing}."
    for key, tensor in tensors.items():
        if key.startswith(prefix):
            field = key.removeprefix(prefix)
            if field == "kept_timesteps":
                assert schedule.timestep_map.tolist() == tensor.tolist()
            else:
                _close(getattr(schedule, FIELDS.get(field, field)), tensor.numpy())


def test_respacing_sweep():
    require_dir()
    data = read_json(FILE)
    steps = data["diffusion_steps"]
    failures = []
    for entry in data["respacing_sweep"]:
        string = entry["string"]
        try:
            kept = space_timesteps(steps, string)
        except ValueError as exc:
            if not entry.get("error"):
                failures.append(f"{string}: refused ({exc})")
            elif string not in str(exc):
                failures.append(f"{string}: error does not name the string")
            continue
        if entry.get("error"):
            failures.append(f"{string}: accepted but upstream refuses it")
            continue
        digest = hashlib.sha256(",".join(map(str, kept)).encode("ascii")).hexdigest()
        got = (len(kept), kept[0], kept[-1], digest)
        want = (entry["num_kept"], entry["first"], entry["last"], entry["sha256"])
        if got != want:
            failures.append(f"{string}: {got[:3]} != {want[:3]}")
    assert not failures, failures[:20]


@pytest.mark.parametrize("bad", ["", "abc", "10,x", "0", "ddim", "ddimx", "ddim1", "2000", "-3"])
def test_invalid_respacing_names_the_string(bad):
    if bad == "":
        assert len(space_timesteps(1000, bad)) == 1000  # "" means every step, as upstream
        return
    with pytest.raises(ValueError, match=repr(bad).replace("'", "'")):
        space_timesteps(1000, bad)


@pytest.mark.parametrize("name", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("count", [1, 2, 10, 25, 100, 1000])
def test_logsnr_spacing_has_exactly_count_distinct_steps(name, count):
    schedule = make_schedule(name, f"logsnr{count}")
    kept = schedule.timestep_map.tolist()
    assert len(kept) == len(set(kept)) == count
    assert kept == sorted(kept)
    assert kept[-1] == 999
    assert count == 1 or kept[0] == 0


def test_default_base_grid_wastes_no_calls_on_near_pure_noise():
    """The base model's cosine schedule caps β at t=999 (λ -9.9 there, -6.5 at 998): an even
    log-SNR grid from λ_999 picked 990-999 one after another. No two consecutive timesteps
    above 980 may both be picked, at the default 25 steps and nearby counts."""
    from text2img.engines.glide.spec import GLIDE

    defaults = GLIDE.settings()
    assert defaults.base_steps + defaults.upsample_steps == 40
    for count in (10, 15, 20, defaults.base_steps, 30, 40):
        kept = make_schedule("squaredcos_cap_v2", f"logsnr{count}").timestep_map.tolist()
        high = [t for t in kept if t > 980]
        pairs = [t for t in high if t - 1 in kept]
        assert pairs == [], (count, high)
        assert kept[-1] == 999  # sampling still starts from pure noise
    # the linear (upsampler) schedule has no such cliff: its grid is as before
    kept = make_schedule("linear", "logsnr15").timestep_map.tolist()
    assert kept[-2:] == [928, 999]
