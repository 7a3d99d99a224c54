"""Build the real `sdxl-lightning` pipeline from the cache: strict loads, no network.

UNet and VAE: built on the `meta` device from configs.py (no memory, no init time), the
safetensors header checked key by key and shape by shape, then the tensors loaded
straight to the target device and assigned (`load_state_dict(strict=True, assign=True)`).
Text encoders and tokenizers: transformers' `from_pretrained` on the pinned snapshot
(`local_files_only`). The Euler scheduler gets SDXL-Lightning's "trailing" spacing.
Every file a load reads is hashed against its Hub etag while it is read (`verify.Hashing`):
nothing is returned, or swapped in, from a file whose bytes differ.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from text2img.engines.base import CancelFn, Cancelled, Progress, ProgressFn
from text2img.engines.sdxl import files, verify
from text2img.engines.sdxl.configs import SDXL_UNET_CONFIG, SDXL_VAE_CONFIG
from text2img.errors import UserError

MAX_HEADER = 100 * 1024 * 1024  # safetensors caps its JSON header at 100 MB
RUN = "text2img download --model sdxl-lightning"


def read_listing(path: Path) -> dict[str, tuple[int, ...]]:
    """key -> shape from a safetensors header (8-byte length + JSON), without the data."""

    def damaged(why: str) -> UserError:
        return UserError(
            f"{path} is not a readable safetensors file ({why}): it is damaged; run `{RUN}` "
            "to fetch it again"
        )

    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if not 0 < length <= MAX_HEADER:
                raise damaged(f"header length {length}")
            header = json.loads(f.read(length))
        return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    except (struct.error, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise damaged(f"its header does not parse: {type(exc).__name__}") from None


def check_listing(
    expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], what: str
) -> None:
    """UserError naming the first missing, unexpected or mis-shaped tensor."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != found[k])
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} mis-shaped (e.g. {k}: {found[k]} not {expected[k]})")
        raise UserError(
            f"{what} does not fit the SDXL architecture: {', '.join(parts)}; run "
            "`text2img download --model sdxl-lightning --force`"
        )


def meta_module(kind: str, config: Mapping[str, Any] | None = None) -> torch.nn.Module:
    """The full-size UNet ("unet") or VAE ("vae") with every tensor on the meta device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        if kind == "unet":
            return UNet2DConditionModel.from_config(dict(config or SDXL_UNET_CONFIG))
        return AutoencoderKL.from_config(dict(config or SDXL_VAE_CONFIG))


def expected_listing(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# diffusers before 0.14 saved a VAE's attention as `AttentionBlock`: query, key, value and
# proj_attn, in some files as 1x1-convolution weights [C, C, 1, 1]. Today's `Attention` has
# to_q, to_k, to_v and to_out.0 as Linear [C, C]. diffusers' from_pretrained renames such
# files on load (ModelMixin._convert_deprecated_attention_blocks); so does load_strict, so
# a VAE saved either way loads, and nothing else is accepted.
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def current_name(key: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
    """(name, shape) a tensor has in today's diffusers modules."""
    head, _, leaf = key.rpartition(".")
    block, _, name = head.rpartition(".")
    if name not in _LEGACY_ATTENTION or ".attentions." not in f".{block}.":
        return key, shape
    if len(shape) == 4 and shape[2:] == (1, 1):
        shape = shape[:2]
    return f"{block}.{_LEGACY_ATTENTION[name]}.{leaf}", shape


def load_strict(
    module: torch.nn.Module, path: Path, device: torch.device, dtype: torch.dtype, what: str
) -> torch.nn.Module:
    """Fill `module` (meta or real) from a safetensors file whose listing must match
    (legacy VAE attention names taken as today's: `current_name`)."""
    from safetensors.torch import load_file

    listing = read_listing(path)
    found = dict(current_name(k, shape) for k, shape in listing.items())
    if len(found) != len(listing):
        raise UserError(
            f"{what} holds some attention tensors twice, under legacy and current names; "
            f"run `{RUN} --force`"
        )
    check_listing(expected_listing(module), found, what)
    state = {}
    for key, tensor in load_file(path, device=str(device)).items():
        name, shape = current_name(key, tuple(tensor.shape))
        state[name] = tensor.reshape(shape).to(dtype)
    on_meta = next(module.parameters()).is_meta
    module.load_state_dict(state, strict=True, assign=on_meta)
    return module.eval().requires_grad_(False)


def swap_into(
    unet: torch.nn.Module,
    path: Path,
    *,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> None:
    """Overwrite a loaded UNet's weights from `path`, tensor by tensor from the file's
    mapping: the device never holds two UNets, and cancellation is polled between tensors.
    The caller must treat the UNet as unusable until this returns and the hash matched."""
    from safetensors import safe_open

    check_listing(expected_listing(unet), read_listing(path), f"the UNet {path.name}")
    params = unet.state_dict()
    keys = sorted(params)
    every = max(1, len(keys) // 20)
    with safe_open(str(path), framework="pt", device="cpu") as f, torch.no_grad():
        for i, key in enumerate(keys):
            if should_cancel is not None and should_cancel():
                raise Cancelled("generation cancelled while loading the UNet")
            params[key].copy_(f.get_tensor(key))
            if progress is not None and (i % every == 0 or i == len(keys) - 1):
                progress(Progress("load_unet", i + 1, len(keys)))


def _on(device: torch.device, module: torch.nn.Module) -> torch.nn.Module:
    """A transformers model moved to `device`, in eval mode, without gradients."""
    moved: torch.nn.Module = module.to(device)
    return moved.eval().requires_grad_(False)


def load_components(
    cache_dir: Path | None,
    device: torch.device,
    dtype: torch.dtype,
    steps: int,
    *,
    unet_config: Mapping[str, Any] = SDXL_UNET_CONFIG,
    vae_config: Mapping[str, Any] = SDXL_VAE_CONFIG,
) -> dict[str, Any]:
    """Every pipeline component from the cache, on `device` in `dtype`.

    The architectures default to SDXL's; tests pass tiny ones with tiny cached files.
    Every file read is hashed meanwhile; UserError (with what to run) if one differs."""
    hub = files.hub_cache(cache_dir)
    entries = [(files.local_path(cache_dir, f), f.label) for f in files.start_files(steps)]
    with verify.Hashing(hub, entries, RUN):  # raises on leaving if any byte differs
        return _load(cache_dir, device, dtype, steps, unet_config, vae_config)


def _load(
    cache_dir: Path | None,
    device: torch.device,
    dtype: torch.dtype,
    steps: int,
    unet_config: Mapping[str, Any],
    vae_config: Mapping[str, Any],
) -> dict[str, Any]:
    from diffusers import EulerDiscreteScheduler
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    base = files.snapshot_dir(cache_dir, files.BASE_REPO, files.BASE_REVISION)
    vae_file = files.local_path(
        cache_dir,
        files.HubFile(
            files.VAE_REPO, files.VAE_REVISION, "diffusion_pytorch_model.safetensors", ""
        ),
    )
    unet_file = files.local_path(cache_dir, files.unet_file(steps))
    common: dict[str, Any] = {"local_files_only": True}
    encoders: dict[str, Any] = {**common, "variant": "fp16", "dtype": dtype}
    scheduler_config = EulerDiscreteScheduler.load_config(str(base / "scheduler"), **common)
    return {
        "unet": load_strict(meta_module("unet", unet_config), unet_file, device, dtype, "the UNet"),
        "vae": load_strict(meta_module("vae", vae_config), vae_file, device, dtype, "the VAE"),
        "text_encoder": _on(
            device, CLIPTextModel.from_pretrained(str(base / "text_encoder"), **encoders)
        ),
        "text_encoder_2": _on(
            device,
            CLIPTextModelWithProjection.from_pretrained(str(base / "text_encoder_2"), **encoders),
        ),
        "tokenizer": CLIPTokenizer.from_pretrained(str(base / "tokenizer"), **common),
        "tokenizer_2": CLIPTokenizer.from_pretrained(str(base / "tokenizer_2"), **common),
        "scheduler": EulerDiscreteScheduler.from_config(
            scheduler_config, timestep_spacing="trailing"
        ),
    }
