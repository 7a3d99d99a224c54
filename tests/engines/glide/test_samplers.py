"""Sampler behaviour beyond the reference cases: DPM-Solver++(2M) convergence, DDIM eta,
and the guidance wrapper."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from glide_reference import read_json, read_tensors, require_dir

from text2img.engines.glide.samplers import (
    SAMPLERS,
    StepInfo,
    classifier_free_guidance,
    sample_ddim,
    sample_dpmpp_2m,
)
from text2img.engines.glide.schedules import make_schedule
from text2img.engines.glide.unet import build_model

DATA_VARIANCE = 0.25


def gaussian_model(schedule_name: str):
    """The exact ε-prediction for data x_0 ~ N(0, s² I): ε* = σ x / (ᾱ s² + σ²)."""
    full = make_schedule(schedule_name, "")

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = torch.from_numpy(full.alphas_cumprod)[t].view(-1, 1, 1, 1).double()
        eps = torch.sqrt(1 - ab) * x.double() / (ab * DATA_VARIANCE + 1 - ab)
        return torch.cat([eps.float(), torch.zeros_like(x)], dim=1)

    return fn


def exact_ode_solution(x: torch.Tensor, schedule) -> torch.Tensor:
    """The probability-flow ODE keeps x / sqrt(ᾱ s² + 1 - ᾱ) constant for Gaussian data."""
    ab = schedule.alphas_cumprod[-1]
    return x.double() * np.sqrt(DATA_VARIANCE) / np.sqrt(ab * DATA_VARIANCE + 1 - ab)


@pytest.mark.parametrize("name", ["linear", "squaredcos_cap_v2"])
def test_dpmpp_2m_is_second_order_on_gaussian_data(name):
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    fn = gaussian_model(name)
    errors = {}
    for steps in (50, 100):
        schedule = make_schedule(name, f"logsnr{steps}")
        out = sample_dpmpp_2m(fn, x, schedule, clip_denoised=False)
        errors[steps] = (out - exact_ode_solution(x, schedule)).abs().max().item()
        ddim = sample_ddim(fn, x, schedule, clip_denoised=False)
        ddim_error = (ddim - exact_ode_solution(x, schedule)).abs().max().item()
        assert errors[steps] < ddim_error / 4  # far more accurate than first order
    # halving the step doubles accuracy twice over (order 2), allowing for float32 noise
    assert errors[100] < errors[50] / 3


@pytest.mark.slow
def test_dpmpp_2m_converges_to_ddim_on_the_tiny_model():
    require_dir()
    data = read_json("tiny_base.cases.json")
    model = build_model(read_json(data["config"]))
    model.load_state_dict(read_tensors(data["weights"]))
    tensors = read_tensors("tiny_base.cases.safetensors")
    tokens, mask = tensors["fwd.tokens"][:1], tensors["fwd.mask"][:1]
    x = tensors["ddim_cfg.noise"][:1]

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x, t, tokens, mask)

    name = read_json(data["config"])["noise_schedule"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.inference_mode():
        target = sample_ddim(fn, x, make_schedule(name, "100"), clip_denoised=True)
        errors = [
            (sample_dpmpp_2m(fn, x, make_schedule(name, f"logsnr{n}")) - target).abs().mean().item()
            for n in (5, 15, 40)
        ]
    torch.set_num_threads(threads)
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.05


def test_ddim_with_eta_uses_noise_and_eta_zero_does_not():
    fn = gaussian_model("linear")
    schedule = make_schedule("linear", "10")
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    calls: list[int] = []

    def noise(k: int) -> torch.Tensor:
        calls.append(k)
        return torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(k))

    deterministic = sample_ddim(fn, x, schedule, eta=0.0, noise_sampler=noise)
    assert calls == []
    stochastic = sample_ddim(fn, x, schedule, eta=1.0, noise_sampler=noise)
    assert calls == list(range(10))
    assert not torch.allclose(deterministic, stochastic)
    with pytest.raises(ValueError, match="eta"):
        sample_ddim(fn, x, schedule, eta=-1.0)


def test_guidance_wrapper_guides_only_the_noise_channels():
    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        half = len(x) // 2
        out = torch.zeros(len(x), 6, 2, 2)
        out[:half, :3], out[half:, :3] = 2.0, 1.0  # cond eps 2, uncond eps 1
        out[:, 3:] = torch.arange(len(x), dtype=torch.float32).view(-1, 1, 1, 1)
        assert torch.equal(x[:half], x[half:])  # the first half is duplicated
        return out

    out = classifier_free_guidance(fn, 3.0)(torch.randn(4, 3, 2, 2), torch.zeros(4).long())
    assert torch.all(out[:, :3] == 1.0 + 3.0 * (2.0 - 1.0))
    assert [out[i, 3:].unique().item() for i in range(4)] == [0, 1, 2, 3]


def test_every_sampler_has_the_same_signature():
    fn = gaussian_model("linear")
    schedule = make_schedule("linear", "5")
    x = torch.randn(2, 3, 4, 4)
    for sampler in SAMPLERS.values():
        seen: list[StepInfo] = []
        out = sampler(
            fn,
            x,
            schedule,
            clip_denoised=True,
            noise_sampler=lambda k: torch.zeros_like(x),
            callback=seen.append,
        )
        assert out.shape == x.shape
        assert [s.step for s in seen] == list(range(5))
        assert out.abs().max() <= 1.0
