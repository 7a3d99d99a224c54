"""The full-size SDXL-Lightning UNet and fp16-fix VAE, built on the `meta` device (no
memory) from the configs the engine loads with, against public figures of the real
checkpoints; and the strict listing check the loader runs before reading any tensor."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
import torch

from text2img.engines.sdxl.loading import check_listing, expected_listing, meta_module, read_listing
from text2img.errors import UserError

# SDXL's UNet: 2.6B parameters (SDXL paper, Table 1: 2.6B, transformer depth [0, 2, 10],
# channel mult [1, 2, 4], context dim 2048); diffusers' count of it is 2,567,463,684.
SDXL_UNET_PARAMS = 2_567_463_684
# sdxl-vae-fp16-fix's diffusion_pytorch_model.safetensors is 334,643,238 bytes (fp32), as
# listed in public download manifests; the fp32 tensors plus a safetensors header fill it.
VAE_FILE_BYTES = 334_643_238


@pytest.fixture(scope="module")
def unet_listing() -> dict[str, tuple[int, ...]]:
    return expected_listing(meta_module("unet"))


def test_unet_has_sdxl_size_and_layout(unet_listing: dict[str, tuple[int, ...]]) -> None:
    params = sum(_numel(s) for s in unet_listing.values())
    assert params == SDXL_UNET_PARAMS
    assert unet_listing["conv_in.weight"] == (320, 4, 3, 3)
    assert unet_listing["time_embedding.linear_1.weight"] == (1280, 320)
    # pooled text (1280) + 6 size/crop numbers x 256: SDXL's micro-conditioning
    assert unet_listing["add_embedding.linear_1.weight"] == (1280, 2816)
    key = "down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k.weight"
    assert unet_listing[key] == (1280, 2048)  # cross-attention on both encoders' states
    blocks = {k.split(".attn1.")[0] for k in unet_listing if ".attn1.to_q." in k}
    # depth 0/2/10 per level: down 2x2 + 2x10, mid 10, up 3x10 + 3x2
    assert len(blocks) == 70
    assert not [k for k in blocks if re.match(r"down_blocks\.0\.", k)]  # none at full res


def test_vae_matches_the_published_fp16_fix_file_size() -> None:
    listing = expected_listing(meta_module("vae"))
    params = sum(_numel(s) for s in listing.values())
    header = VAE_FILE_BYTES - 8 - 4 * params
    assert 0 < header < 64 * 1024, header  # room for the JSON header, nothing more
    assert len(listing) == 248
    assert listing["decoder.conv_out.weight"] == (3, 128, 3, 3)
    assert listing["post_quant_conv.weight"] == (4, 4, 1, 1)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _sparse_safetensors(path: Path, listing: dict[str, tuple[int, ...]], bytes_per: int) -> Path:
    """A safetensors file with this header and zero-filled (sparse) data: no disk used."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, shape in sorted(listing.items()):
        size = _numel(shape) * bytes_per
        header[key] = {
            "dtype": "F16",
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    payload = json.dumps(header).encode()
    payload += b" " * (-len(payload) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(payload)))
        f.write(payload)
        f.truncate(8 + len(payload) + offset)
    return path


def test_a_full_size_unet_file_passes_the_strict_check_and_a_wrong_one_does_not(
    unet_listing: dict[str, tuple[int, ...]], tmp_path: Path
) -> None:
    good = _sparse_safetensors(tmp_path / "unet.safetensors", unet_listing, 2)
    assert good.stat().st_size > 2 * SDXL_UNET_PARAMS  # a 5.1 GB fp16 file, as shipped
    check_listing(unet_listing, read_listing(good), "the UNet")

    missing = dict(unet_listing)
    del missing["mid_block.attentions.0.transformer_blocks.3.ff.net.2.weight"]
    bad = _sparse_safetensors(tmp_path / "missing.safetensors", missing, 2)
    with pytest.raises(UserError, match=r"1 missing \(e\.g\. mid_block"):
        check_listing(unet_listing, read_listing(bad), "the UNet")

    # SD 1.x's cross-attention width (768) in place of SDXL's 2048
    reshaped = dict(
        unet_listing,
        **{"mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight": (1280, 768)},
    )
    bad = _sparse_safetensors(tmp_path / "shape.safetensors", reshaped, 2)
    with pytest.raises(UserError, match=r"mis-shaped.*--force"):
        check_listing(unet_listing, read_listing(bad), "the UNet")


def test_a_file_that_is_not_safetensors_is_named(tmp_path: Path) -> None:
    html = tmp_path / "unet.safetensors"
    html.write_bytes(b"<!DOCTYPE html><html>proxy login page</html>")
    with pytest.raises(UserError, match="not a readable safetensors file") as err:
        read_listing(html)
    assert "run `text2img download --model sdxl-lightning`" in str(err.value)
    # a header whose length is right but whose JSON is damaged: the same answer, no traceback
    good = b'{"a": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}}'
    broken = tmp_path / "broken.safetensors"
    bad = good.replace(b"shape", b"sh\xffpe")
    broken.write_bytes(struct.pack("<Q", len(good)) + bad + b"\0" * 4)
    with pytest.raises(UserError, match="header does not parse") as err:
        read_listing(broken)
    assert "run `text2img download --model sdxl-lightning`" in str(err.value)


# a VAE small enough to build for real, with the mid-block attention the SDXL VAE has
ATTENTION_VAE = {
    "block_out_channels": (8, 8),
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "layers_per_block": 1,
    "norm_num_groups": 2,
    "latent_channels": 4,
    "mid_block_add_attention": True,
}
LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def _saved_as_before_diffusers_0_14(vae: torch.nn.Module, path: Path, conv: bool) -> Path:
    """The VAE's state dict with its attention under AttentionBlock's names (and, with
    `conv`, the 1x1-convolution weight shape some such files have)."""
    from safetensors.torch import save_file

    state = {}
    for key, tensor in vae.state_dict().items():
        for new, old in LEGACY.items():
            if f".attentions.0.{new}." in key:
                key = key.replace(f".{new}.", f".{old}.")
                if conv and tensor.ndim == 2:
                    tensor = tensor[:, :, None, None]
        state[key] = tensor.contiguous()
    save_file(state, str(path))
    return path


@pytest.mark.parametrize("conv", [False, True])
def test_a_vae_saved_with_legacy_attention_names_loads_the_same_tensors(
    tmp_path: Path, conv: bool
) -> None:
    # diffusers' from_pretrained renames query/key/value/proj_attn on load; the real
    # fp16-fix VAE may be such a file, and our strict load must take it as diffusers does
    from diffusers import AutoencoderKL

    from text2img.engines.sdxl.loading import load_strict

    torch.manual_seed(0)
    vae = AutoencoderKL(**ATTENTION_VAE)
    path = _saved_as_before_diffusers_0_14(vae, tmp_path / "vae.safetensors", conv)
    assert any(".attentions.0.query." in k for k in read_listing(path))  # really legacy
    loaded = load_strict(
        meta_module("vae", ATTENTION_VAE), path, torch.device("cpu"), torch.float32, "the VAE"
    )
    for key, tensor in vae.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], tensor, rtol=0, atol=0)


def test_a_vae_with_both_legacy_and_current_names_is_refused(tmp_path: Path) -> None:
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from text2img.engines.sdxl.loading import load_strict

    vae = AutoencoderKL(**ATTENTION_VAE)
    state = {k: v.contiguous() for k, v in vae.state_dict().items()}
    q = "decoder.mid_block.attentions.0.to_q.weight"
    state[q.replace("to_q", "query")] = state[q].clone()
    save_file(state, str(tmp_path / "vae.safetensors"))
    with pytest.raises(UserError, match="twice"):
        load_strict(meta_module("vae", ATTENTION_VAE), tmp_path / "vae.safetensors",
                    torch.device("cpu"), torch.float32, "the VAE")  # fmt: skip
