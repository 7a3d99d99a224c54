"""Full-size models built on the meta device reproduce upstream's parameter listings."""

from __future__ import annotations

import pytest
from glide_reference import names, read_json, require_dir

from text2img.engines.glide.config import BASE_OPTIONS, UPSAMPLE_OPTIONS
from text2img.engines.glide.unet import build_model


@pytest.mark.parametrize("listing", names("*_params.json"))
def test_full_size_listing(listing):
    data = read_json(listing)
    model = build_model({**data["options"], "n_vocab": data["n_vocab"]}, device="meta")
    state = model.state_dict()
    assert set(state) == set(data["keys_in_order"])
    assert {k: list(v.shape) for k, v in state.items()} == data["shapes"]
    assert len(state) == data["num_tensors"]
    assert sum(v.numel() for v in state.values()) == data["total_params"]
    assert {str(v.dtype).removeprefix("torch.") for v in state.values()} == set(
        data["dtypes"] if isinstance(data["dtypes"], list) else data["dtypes"].values()
    )


def test_released_option_sets_match_the_listings():
    require_dir()
    listings = {read_json(n)["options"]["super_res"]: read_json(n) for n in names("*_params.json")}
    assert listings[False]["options"] == BASE_OPTIONS
    assert listings[True]["options"] == UPSAMPLE_OPTIONS
