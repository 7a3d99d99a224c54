"""Noise schedules and respacing (Ho et al. 2020; Nichol & Dhariwal 2021), in float64.

Symbols (reference spec §7, upstream's array names):

| name                             | symbol                               |
| -------------------------------- | ------------------------------------ |
| `betas`                          | β_t (respaced: 1 - ᾱ_t / ᾱ_prev)     |
| `alphas_cumprod`                 | ᾱ_t = Π (1 - β_s)                    |
| `alphas_cumprod_prev`            | ᾱ_{t-1} (1 at t = 0)                 |
| `sqrt_recip_alphas_cumprod`      | sqrt(1 / ᾱ_t)                        |
| `sqrt_recipm1_alphas_cumprod`    | sqrt(1 / ᾱ_t - 1)                    |
| `posterior_variance`             | β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t)  |
| `posterior_log_variance_clipped` | log β̃_t with β̃_0 replaced by β̃_1    |
| `posterior_mean_coef1/2`         | μ̃_t = coef1 x̂_0 + coef2 x_t          |
| `timestep_map`                   | respaced index -> original timestep  |

Every array is float64 with one entry per respaced step; `coef` looks an entry up per row
and casts it to float32, as upstream does, so all further sampling maths is float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

NOISE_SCHEDULES = ("linear", "squaredcos_cap_v2")


def named_betas(name: str, num_steps: int = 1000) -> np.ndarray:
    """β_t for upstream's "linear" (DDPM) or "squaredcos_cap_v2" (improved DDPM) schedule."""
    if name == "linear":
        scale = 1000 / num_steps
        return np.linspace(scale * 0.0001, scale * 0.02, num_steps, dtype=np.float64)
    if name == "squaredcos_cap_v2":

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array(
            [
                min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), 0.999)
                for i in range(num_steps)
            ],
            dtype=np.float64,
        )
    raise ValueError(f"unknown noise schedule {name!r}; expected one of {NOISE_SCHEDULES}")


def logsnr_timesteps(alphas_cumprod: np.ndarray, count: int) -> list[int]:
    """`count` distinct timesteps (ascending): T-1, then even spacing in log-SNR.

    λ_t = ½ log(ᾱ_t / (1 - ᾱ_t)) is split evenly from λ_s to λ_0, the spacing the
    DPM-Solver paper recommends for pixel-space models (Lu et al. 2022, §5); the first
    grid point is replaced by T-1, where sampling starts from pure noise. The start s is the
    highest timestep at which one timestep moves λ by at most half the grid spacing: above
    it λ falls so steeply that an even grid lands on consecutive timesteps of near-pure
    noise (the cosine schedule caps β at T-1, so λ_999 = -9.9 while λ_998 = -6.5; spaced
    from λ_999, 10 of 25 base steps fell on 990-999). Each target takes the nearest
    timestep below the previous pick, so all `count` steps stay distinct.
    """
    total = len(alphas_cumprod)
    if not 1 <= count <= total:
        raise ValueError(f"invalid respacing 'logsnr{count}': count must be 1..{total}")
    lam = 0.5 * (np.log(alphas_cumprod) - np.log1p(-alphas_cumprod))
    if count == 1:
        return [total - 1]
    start = total - 1
    spacing = (lam[0] - lam[start]) / (count - 1)
    while start > count - 1 and lam[start - 1] - lam[start] > spacing / 2:
        start -= 1
        spacing = (lam[0] - lam[start]) / (count - 1)
    targets = np.linspace(lam[start], lam[0], count)
    picked = [total - 1]
    upper = total - 2  # highest timestep still allowed
    for i, target in enumerate(targets[1:], start=1):
        lowest = count - 1 - i  # leave room for the remaining picks
        candidates = np.arange(lowest, upper + 1)
        best = int(candidates[np.argmin(np.abs(lam[candidates] - target))])
        picked.append(best)
        upper = best - 1
    return sorted(picked)


def space_timesteps(
    num_timesteps: int, respacing: str, alphas_cumprod: np.ndarray | None = None
) -> list[int]:
    """Kept original timesteps (ascending) for a respacing string, exactly as upstream.

    "N" or "a,b,c": equal sections of the schedule, each keeping that many steps at
    positions accumulated as floats and rounded half-to-even; "ddimN": the smallest stride
    s with ceil(T / s) = N; "fast27": "10,10,3,2,2" with T-1 replaced by T-3; "": all steps.
    Our extension "logsnrN" (needs `alphas_cumprod`): see `logsnr_timesteps`.
    Raises ValueError naming the string when it is not valid.
    """
    if respacing.startswith("logsnr") and alphas_cumprod is not None:
        try:
            count = int(respacing[6:])
        except ValueError:
            raise ValueError(f"invalid respacing {respacing!r}: logsnr needs a count") from None
        return logsnr_timesteps(alphas_cumprod, count)
    if respacing == "":
        return list(range(num_timesteps))
    if respacing == "fast27":
        steps = set(space_timesteps(num_timesteps, "10,10,3,2,2"))
        steps.remove(num_timesteps - 1)
        steps.add(num_timesteps - 3)
        return sorted(steps)
    if respacing.startswith("ddim"):
        try:
            desired = int(respacing[4:])
        except ValueError:
            raise ValueError(f"invalid respacing {respacing!r}: ddim needs a count") from None
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == desired:
                return list(range(0, num_timesteps, stride))
        raise ValueError(
            f"invalid respacing {respacing!r}: no integer stride gives exactly {desired} steps"
        )
    try:
        counts = [int(part) for part in respacing.split(",")]
    except ValueError:
        raise ValueError(
            f"invalid respacing {respacing!r}: expected counts like '100' or '10,10,3,2,2', "
            "'ddimN' or 'fast27'"
        ) from None
    size_per, extra = divmod(num_timesteps, len(counts))
    start, kept = 0, list[int]()
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if count < 1 or size < count:
            raise ValueError(
                f"invalid respacing {respacing!r}: cannot take {count} steps from a section "
                f"of {size}"
            )
        frac_stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))
            position += frac_stride
        start += size
    return sorted(set(kept))


@dataclass(frozen=True, eq=False)
class Schedule:
    """A (respaced) diffusion schedule: float64 arrays indexed by respaced step."""

    timestep_map: np.ndarray
    betas: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray
    log_betas: np.ndarray
    posterior_variance: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray

    @property
    def num_steps(self) -> int:
        return len(self.betas)

    def coef(self, name: str, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """Array `name` at respaced indices t, cast to float32, shaped to broadcast over ndim."""
        values = torch.from_numpy(getattr(self, name)).to(t.device)[t].float()
        return values.view(-1, *([1] * (ndim - 1)))

    def original_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Map respaced indices to the original timesteps the model was trained on."""
        return torch.from_numpy(self.timestep_map).to(t.device)[t]

    @classmethod
    def from_betas(cls, betas: np.ndarray, timestep_map: np.ndarray) -> Schedule:
        """Derive every array from β_t in float64 (upstream's GaussianDiffusion)."""
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.shape != timestep_map.shape:
            raise ValueError("betas and timestep_map must be 1-D and of equal length")
        if not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must lie in (0, 1]")
        alphas = 1.0 - betas
        ac = np.cumprod(alphas, axis=0)
        ac_prev = np.append(1.0, ac[:-1])
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        clipped = np.append(post_var[1], post_var[1:]) if len(betas) > 1 else post_var
        with np.errstate(divide="ignore"):  # a one-step schedule has zero variance
            post_log = np.log(clipped)
        schedule = cls(
            timestep_map=timestep_map.astype(np.int64),
            betas=betas,
            alphas_cumprod=ac,
            alphas_cumprod_prev=ac_prev,
            sqrt_recip_alphas_cumprod=np.sqrt(1.0 / ac),
            sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ac - 1),
            log_betas=np.log(betas),
            posterior_variance=post_var,
            posterior_log_variance_clipped=post_log,
            posterior_mean_coef1=betas * np.sqrt(ac_prev) / (1.0 - ac),
            posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        )
        for name, value in vars(schedule).items():
            assert value.shape == betas.shape, f"{name} has shape {value.shape}"
        return schedule


@lru_cache(maxsize=64)
def make_schedule(
    noise_schedule: str, respacing: str = "", diffusion_steps: int = 1000
) -> Schedule:
    """The respaced schedule: β'_i = 1 - ᾱ[k_i] / ᾱ[k_{i-1}] over the kept timesteps k."""
    base = named_betas(noise_schedule, diffusion_steps)
    base_ac = np.cumprod(1.0 - base, axis=0)
    kept = space_timesteps(diffusion_steps, respacing, base_ac)
    last, new_betas = 1.0, []
    for k in kept:
        new_betas.append(1 - base_ac[k] / last)
        last = base_ac[k]
    return Schedule.from_betas(np.array(new_betas, dtype=np.float64), np.array(kept))
