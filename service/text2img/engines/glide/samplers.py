"""Samplers as pure functions over a (respaced) `Schedule`, k-diffusion style.

Every sampler has the form `sample_x(model_fn, x, schedule, *, clip_denoised, noise_sampler,
callback) -> x_0`. `model_fn(x, t)` takes ORIGINAL timesteps and returns GLIDE's six
channels (ε, variance interpolation v); nothing is stored between calls, so one model can
serve concurrent requests. Classifier-free guidance is `classifier_free_guidance`, a
wrapper around the model function (Ho & Salimans 2021; upstream's notebook layout).

| sampler      | algorithm                                                        | calls |
| ------------ | ---------------------------------------------------------------- | ----- |
| `ancestral`  | p(x_{t-1} | x_t) with learned variance (Nichol & Dhariwal 2021)  | N     |
| `ddim`       | DDIM (Song et al. 2021), eta 0 deterministic, eta > 0 stochastic | N     |
| `dpm++2m`    | DPM-Solver++(2M), data prediction (Lu et al. 2022, 2211.01095)   | N     |

Symbols: ᾱ_t = alphas_cumprod, α_t = sqrt(ᾱ_t), σ_t = sqrt(1 - ᾱ_t), λ_t = log(α_t / σ_t),
x̂_0 = pred_xstart (clamped to [-1, 1] when clipping), ε̂ = predicted noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from text2img.engines.glide.schedules import Schedule

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseSampler = Callable[[int], torch.Tensor]


@dataclass(frozen=True)
class StepInfo:
    """What a sampler reports after each loop step (step 0 = the noisiest)."""

    step: int
    total: int
    x: torch.Tensor
    pred_xstart: torch.Tensor


Callback = Callable[[StepInfo], None]


@dataclass(frozen=True)
class MeanVariance:
    """Output of `p_mean_variance` (float32 tensors shaped like x, model_output 2x channels)."""

    model_output: torch.Tensor
    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    pred_xstart: torch.Tensor


def classifier_free_guidance(model_fn: ModelFn, guidance_scale: float) -> ModelFn:
    """ε̃ = ε_u + s (ε_c - ε_u) on the 3 noise channels, for a batch [cond rows; uncond rows].

    Upstream's layout: the first half of x is duplicated and run through `model_fn` (whose
    conditioning is bound as [cond; uncond]); both halves receive the guided ε and keep
    their own variance channels.
    """

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        half = x[: len(x) // 2]
        out = model_fn(torch.cat([half, half], dim=0), t)
        eps, rest = out[:, :3], out[:, 3:]
        cond_eps, uncond_eps = eps.split(len(eps) // 2, dim=0)
        half_eps = uncond_eps + guidance_scale * (cond_eps - uncond_eps)
        return torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=1)

    return guided


def p_mean_variance(
    model_fn: ModelFn, x: torch.Tensor, t: torch.Tensor, schedule: Schedule, *,
    clip_denoised: bool = True,
) -> MeanVariance:  # fmt: skip
    """Mean and learned-range variance of p(x_{t-1} | x_t) at respaced indices t (iDDPM)."""
    model_output = model_fn(x, schedule.original_timesteps(t))
    channels = x.shape[1]
    if model_output.shape[1] != 2 * channels:
        got = model_output.shape[1]
        raise ValueError(f"model output has {got} channels, expected {2 * channels}")
    eps, v = model_output[:, :channels].float(), model_output[:, channels:].float()
    nd = x.ndim
    min_log = schedule.coef("posterior_log_variance_clipped", t, nd)
    max_log = schedule.coef("log_betas", t, nd)
    frac = (v + 1) / 2
    log_variance = frac * max_log + (1 - frac) * min_log
    pred_xstart = (
        schedule.coef("sqrt_recip_alphas_cumprod", t, nd) * x
        - schedule.coef("sqrt_recipm1_alphas_cumprod", t, nd) * eps
    )
    if clip_denoised:
        pred_xstart = pred_xstart.clamp(-1, 1)
    mean = (
        schedule.coef("posterior_mean_coef1", t, nd) * pred_xstart
        + schedule.coef("posterior_mean_coef2", t, nd) * x
    )
    return MeanVariance(model_output, mean, torch.exp(log_variance), log_variance, pred_xstart)


def _indices(schedule: Schedule, batch: int, device: torch.device) -> list[torch.Tensor]:
    return [
        torch.full((batch,), i, dtype=torch.long, device=device)
        for i in reversed(range(schedule.num_steps))
    ]


def sample_ancestral(
    model_fn: ModelFn, x: torch.Tensor, schedule: Schedule, *, clip_denoised: bool = True,
    noise_sampler: NoiseSampler, callback: Callback | None = None,
) -> torch.Tensor:  # fmt: skip
    """Ancestral sampling: x_{t-1} = μ̃ + exp(½ log Σ) z, no noise at index 0 (DDPM/iDDPM)."""
    steps = _indices(schedule, len(x), x.device)
    for k, t in enumerate(steps):
        out = p_mean_variance(model_fn, x, t, schedule, clip_denoised=clip_denoised)
        noise = noise_sampler(k)
        nonzero = (t != 0).float().view(-1, *([1] * (x.ndim - 1)))
        x = out.mean + nonzero * torch.exp(0.5 * out.log_variance) * noise
        if callback is not None:
            callback(StepInfo(k, len(steps), x, out.pred_xstart))
    return x


def sample_ddim(
    model_fn: ModelFn, x: torch.Tensor, schedule: Schedule, *, eta: float = 0.0,
    clip_denoised: bool = True, noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:  # fmt: skip
    """DDIM (Song et al. 2021, eq. 12): ε re-derived from the clipped x̂_0, then
    x_prev = x̂_0 sqrt(ᾱ_prev) + sqrt(1 - ᾱ_prev - σ²) ε + σ z,
    σ = eta sqrt((1 - ᾱ_prev)/(1 - ᾱ)) sqrt(1 - ᾱ/ᾱ_prev)."""
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if eta > 0 and noise_sampler is None:
        raise ValueError("DDIM with eta > 0 needs a noise_sampler")
    steps = _indices(schedule, len(x), x.device)
    nd = x.ndim
    for k, t in enumerate(steps):
        out = p_mean_variance(model_fn, x, t, schedule, clip_denoised=clip_denoised)
        eps = (
            schedule.coef("sqrt_recip_alphas_cumprod", t, nd) * x - out.pred_xstart
        ) / schedule.coef("sqrt_recipm1_alphas_cumprod", t, nd)
        alpha_bar = schedule.coef("alphas_cumprod", t, nd)
        alpha_bar_prev = schedule.coef("alphas_cumprod_prev", t, nd)
        sigma = (
            eta
            * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
            * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        )
        x = (
            out.pred_xstart * torch.sqrt(alpha_bar_prev)
            + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        )
        if eta > 0 and noise_sampler is not None:
            nonzero = (t != 0).float().view(-1, *([1] * (nd - 1)))
            x = x + nonzero * sigma * noise_sampler(k)
        if callback is not None:
            callback(StepInfo(k, len(steps), x, out.pred_xstart))
    return x


@dataclass(frozen=True)
class _DPMCoefficients:
    """Per-step float64 coefficients of DPM-Solver++(2M) between consecutive respaced steps."""

    sigma_ratio: np.ndarray  # σ_{next} / σ_cur
    alpha_expm1: np.ndarray  # α_next (exp(-h) - 1), h = λ_next - λ_cur
    r: np.ndarray  # h_prev / h (unused at the first step)


def _dpm_coefficients(schedule: Schedule) -> _DPMCoefficients:
    ac = schedule.alphas_cumprod[::-1].astype(np.float64)  # loop order: noisiest first
    alpha, sigma = np.sqrt(ac), np.sqrt(1.0 - ac)
    lam = np.log(alpha) - np.log(sigma)
    n = len(ac)
    h = lam[1:] - lam[:-1]  # n - 1 transitions between evaluated steps
    r = np.concatenate([[np.nan], h[:-1] / h[1:]]) if n > 1 else np.zeros(0)
    coefficients = _DPMCoefficients(sigma[1:] / sigma[:-1], alpha[1:] * np.expm1(-h), r)
    for value in vars(coefficients).values():
        assert value.shape == (n - 1,)
    return coefficients


def sample_dpmpp_2m(
    model_fn: ModelFn, x: torch.Tensor, schedule: Schedule, *, clip_denoised: bool = True,
    noise_sampler: NoiseSampler | None = None, callback: Callback | None = None,
) -> torch.Tensor:  # fmt: skip
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), multistep in data-prediction form.

    x_next = (σ_next/σ) x - α_next (e^{-h} - 1) D, with D = x̂_0 on the first step and
    D = (1 + 1/2r) x̂_0 - (1/2r) x̂_0,prev afterwards (r = h_prev/h); the last step returns
    x̂_0 (σ = 0). One model call per respaced step; x̂_0 is clipped like upstream.
    Deterministic: `noise_sampler` is accepted for a uniform signature and never called.
    """
    del noise_sampler
    coefficients = _dpm_coefficients(schedule)
    steps = _indices(schedule, len(x), x.device)
    previous: torch.Tensor | None = None
    for k, t in enumerate(steps):
        out = p_mean_variance(model_fn, x, t, schedule, clip_denoised=clip_denoised)
        x0 = out.pred_xstart
        if k == len(steps) - 1:
            x = x0
        else:
            if previous is None:
                d = x0
            else:
                half_inv_r = float(0.5 / coefficients.r[k])
                d = (1 + half_inv_r) * x0 - half_inv_r * previous
            x = float(coefficients.sigma_ratio[k]) * x - float(coefficients.alpha_expm1[k]) * d
        previous = x0
        if callback is not None:
            callback(StepInfo(k, len(steps), x, x0))
    return x


Sampler = Callable[..., torch.Tensor]
SAMPLERS: dict[str, Sampler] = {
    "ancestral": sample_ancestral,
    "ddim": sample_ddim,
    "dpm++2m": sample_dpmpp_2m,
}
