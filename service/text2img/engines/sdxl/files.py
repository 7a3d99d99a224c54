"""The pinned Hub files `sdxl-lightning` needs, and where they sit in our cache.

Revisions are commit hashes, so a repository that changes upstream never changes what we
load. Where they were read (2026-12-01, through the project's search tool):

- stabilityai/stable-diffusion-xl-base-1.0 @ 462165984030d82259a11f4367a4eed129e94a7b:
  the snapshot folder name `models--stabilityai--stable-diffusion-xl-base-1.0/snapshots/…`
  in several public projects' scripts and pinned-revision tables.
- ByteDance/SDXL-Lightning @ c9a24f48e1c025556787b0c58dd67a091ece2e44: the repository's
  newest commit ("Update README.md", 2024-04-03) on its huggingface.co commit history page.
- madebyollin/sdxl-vae-fp16-fix @ 207b116dae70ace3637169f1ddd2434b91b3a8cd: pinned by
  several public projects (snapshot paths and revision tables).

Only what the pipeline reads is fetched: fp16 text encoders (`model.fp16.safetensors`)
with their configs, tokenizer files, the scheduler config, the three distilled UNets
(already fp16) and the fp16-fix VAE (its repository ships it as one fp32 safetensors
file; it is cast on load). The UNet and VAE architectures are data in configs.py.
Cache: `<TEXT2IMG_MODEL_CACHE or ~/.cache/text2img>/huggingface`, huggingface_hub's own
layout (`models--org--name/{blobs,snapshots}`), next to GLIDE's files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

BASE_REPO = "stabilityai/stable-diffusion-xl-base-1.0"
BASE_REVISION = "462165984030d82259a11f4367a4eed129e94a7b"
LIGHTNING_REPO = "ByteDance/SDXL-Lightning"
LIGHTNING_REVISION = "c9a24f48e1c025556787b0c58dd67a091ece2e44"
VAE_REPO = "madebyollin/sdxl-vae-fp16-fix"
VAE_REVISION = "207b116dae70ace3637169f1ddd2434b91b3a8cd"

HUB_SUBDIR = "huggingface"
DEFAULT_ENDPOINT = "https://huggingface.co"


@dataclass(frozen=True)
class HubFile:
    """One file of one pinned repository; `part` groups files for status and messages."""

    repo: str
    revision: str
    path: str
    part: str

    @property
    def label(self) -> str:
        return f"{self.repo}/{self.path}"


def _tokenizer(folder: str) -> tuple[HubFile, ...]:
    names = ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json")
    return tuple(HubFile(BASE_REPO, BASE_REVISION, f"{folder}/{n}", folder) for n in names)


def unet_file(steps: int) -> HubFile:
    """The distilled UNet for `steps` (2, 4 or 8): one full fp16 UNet state dict each."""
    return HubFile(
        LIGHTNING_REPO, LIGHTNING_REVISION, f"sdxl_lightning_{steps}step_unet.safetensors", "unet"
    )


UNET_STEPS = (2, 4, 8)

FILES: tuple[HubFile, ...] = (
    HubFile(BASE_REPO, BASE_REVISION, "LICENSE.md", "licence"),
    HubFile(BASE_REPO, BASE_REVISION, "scheduler/scheduler_config.json", "scheduler"),
    HubFile(BASE_REPO, BASE_REVISION, "text_encoder/config.json", "text_encoder"),
    HubFile(BASE_REPO, BASE_REVISION, "text_encoder/model.fp16.safetensors", "text_encoder"),
    HubFile(BASE_REPO, BASE_REVISION, "text_encoder_2/config.json", "text_encoder_2"),
    HubFile(BASE_REPO, BASE_REVISION, "text_encoder_2/model.fp16.safetensors", "text_encoder_2"),
    *_tokenizer("tokenizer"),
    *_tokenizer("tokenizer_2"),
    HubFile(LIGHTNING_REPO, LIGHTNING_REVISION, "LICENSE.md", "licence"),
    *(unet_file(steps) for steps in UNET_STEPS),
    HubFile(VAE_REPO, VAE_REVISION, "diffusion_pytorch_model.safetensors", "vae"),
)


def wanted(steps: tuple[int, ...]) -> tuple[HubFile, ...]:
    """The files a deployment serving these step counts downloads: everything but the
    distilled UNets of the step counts it does not serve (5.1 GB each)."""
    return tuple(f for f in FILES if f.part != "unet" or f in {unet_file(s) for s in steps})


def start_files(steps: int) -> tuple[HubFile, ...]:
    """What a start with the `steps` UNet reads (and so hashes): no licence, one UNet."""
    return tuple(f for f in wanted((steps,)) if f.part != "licence")


def default_cache_dir() -> Path:
    """The one weights cache every engine shares (`registry.default_cache_dir`)."""
    from text2img.engines.registry import default_cache_dir as shared

    return shared()


def hub_cache(cache_dir: Path | None) -> Path:
    """Where huggingface_hub keeps our repositories inside the shared cache directory."""
    return (cache_dir if cache_dir is not None else default_cache_dir()) / HUB_SUBDIR


def snapshot_dir(cache_dir: Path | None, repo: str, revision: str) -> Path:
    """huggingface_hub's snapshot folder of `repo` at `revision` (symlinks to blobs)."""
    folder = "models--" + repo.replace("/", "--")
    return hub_cache(cache_dir) / folder / "snapshots" / revision


def local_path(cache_dir: Path | None, hub_file: HubFile) -> Path:
    return snapshot_dir(cache_dir, hub_file.repo, hub_file.revision) / hub_file.path


def endpoint() -> str:
    """The Hub endpoint, read at call time: $HF_ENDPOINT (a mirror) or huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline() -> bool:
    """$HF_HUB_OFFLINE (or transformers' TRANSFORMERS_OFFLINE), read at call time."""
    flags = (
        os.environ.get(n, "").strip().lower() for n in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    return any(flag in {"1", "on", "yes", "true"} for flag in flags)
