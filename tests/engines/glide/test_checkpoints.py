"""load_released: the fp16 cache's tensors land in the model with the right dtypes.

`convert.load_state_dict` (the cache, tested in test_weights.py) is replaced by a function
returning a fp16 state dict of the tiny architecture, which also stands in for the
full-size options so that the test stays small.
"""

from __future__ import annotations

import pytest
import torch

from text2img.engines.glide import checkpoints
from text2img.engines.glide.tiny import TINY_BASE_OPTIONS, randomize_
from text2img.engines.glide.unet import build_model


@pytest.fixture
def fp16_cache(monkeypatch, tmp_path):
    source = randomize_(build_model(TINY_BASE_OPTIONS), 5)
    state = {k: v.half() for k, v in source.state_dict().items()}
    asked: dict[str, object] = {}

    def fake_load(cache_dir, name, expected):
        asked.update(cache_dir=cache_dir, name=name, expected=dict(expected))
        return dict(state)

    monkeypatch.setitem(checkpoints.RELEASED_OPTIONS, "base", TINY_BASE_OPTIONS)
    monkeypatch.setattr(checkpoints, "load_state_dict", fake_load)  # the name it calls
    return state, asked


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_load_released_casts_to_the_layout(fp16_cache, tmp_path, dtype):
    state, asked = fp16_cache
    model = checkpoints.load_released(tmp_path, "base", dtype=dtype)
    assert asked["name"] == "base"
    assert asked["expected"] == {k: tuple(v.shape) for k, v in state.items()}
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in loaded.items():
        assert torch.equal(value.half(), state[key]), key
    dtypes = {v.dtype for v in loaded.values()}
    assert dtypes == ({torch.float32} if dtype == torch.float32 else {torch.float16, torch.float32})
    assert model.dtype == dtype
    assert not any(p.requires_grad for p in model.parameters())
