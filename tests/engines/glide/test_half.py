"""Upstream's half-precision layout; the fp16 forward itself runs only where CUDA exists."""

from __future__ import annotations

import pytest
import torch
from glide_reference import read_json, read_tensors, require_dir

from text2img.engines.glide.tiny import TINY_BASE_OPTIONS, TINY_UPSAMPLE_OPTIONS
from text2img.engines.glide.unet import build_model

HALF_PREFIXES = ("input_blocks.", "middle_block.", "output_blocks.", "transformer.")


def expected_dtype(key: str) -> torch.dtype:
    """The reference spec's §7 "Half precision" list."""
    if key.startswith(("transformer_proj.", "token_embedding.")):
        return torch.float16
    if not key.startswith(HALF_PREFIXES) or ".emb_layers." in key:
        return torch.float32
    if key.startswith("transformer."):  # Linear layers yes, LayerNorms no
        return torch.float32 if (".ln_" in key) else torch.float16
    # UNet blocks: convolutions (incl. qkv/encoder_kv/proj_out/skip) yes, GroupNorms no
    return (
        torch.float32
        if (".norm." in key or ".in_layers.0." in key or ".out_layers.0." in key)
        else torch.float16
    )


@pytest.mark.parametrize("options", [TINY_BASE_OPTIONS, TINY_UPSAMPLE_OPTIONS])
def test_convert_to_fp16_follows_upstream_layout(options):
    model = build_model(options)
    model.convert_to_fp16()
    wrong = {k: v.dtype for k, v in model.state_dict().items() if v.dtype != expected_dtype(k)}
    assert not wrong
    assert model.dtype == torch.float16


def test_half_layout_forward_plumbing_on_cpu_kernels():
    """The dtype plumbing of the half layout (casts between fp16 trunk and fp32 parts) runs
    and stays close to the fp32 reference; CPU kernels only, the speed path is CUDA's."""
    require_dir()
    data = read_json("tiny_base.cases.json")
    model = build_model(read_json(data["config"]))
    model.load_state_dict(read_tensors(data["weights"]))
    model.convert_to_fp16()
    t = read_tensors("tiny_base.cases.safetensors")
    with torch.inference_mode():
        out = model(t["fwd.x_t"], t["fwd.timesteps"], t["fwd.tokens"], t["fwd.mask"])
    assert out.dtype == torch.float32
    diff = (out - t["fwd.output"]).abs()
    assert 0 < diff.mean().item() < 5e-3  # fp16 rounding, and really half precision


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_forward_on_cuda_is_close_to_the_reference():
    require_dir()
    for name in ("tiny_base", "tiny_upsample"):
        data = read_json(f"{name}.cases.json")
        model = build_model(read_json(data["config"]))
        model.load_state_dict(read_tensors(data["weights"]))
        model.convert_to_fp16()
        model = model.cuda()
        t = {k: v.cuda() for k, v in read_tensors(f"{name}.cases.safetensors").items()}
        low_res = t.get("fwd.low_res")
        with torch.inference_mode():
            out = model(
                t["fwd.x_t"], t["fwd.timesteps"], t["fwd.tokens"], t["fwd.mask"], low_res=low_res
            )
        assert out.dtype == torch.float32
        diff = (out - t["fwd.output"]).abs()
        assert diff.mean().item() < 1e-2, name
        assert torch.isfinite(out).all()
