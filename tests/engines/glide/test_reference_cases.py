"""Every computation case of the reference folder, dispatched on its `kind`.

Inputs and outputs are found through each case's `inputs` / `outputs` lists by their
role suffix (x_t, timesteps, tokens, mask, low_res, x, t, noise, step_noise, ...).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from glide_reference import (
    assert_close,
    case_id,
    cases,
    read_json,
    read_tensors,
    reference_dir,
)

from text2img.engines.glide.samplers import (
    classifier_free_guidance,
    p_mean_variance,
    sample_ancestral,
    sample_ddim,
)
from text2img.engines.glide.schedules import make_schedule
from text2img.engines.glide.tokenizer import BPETokenizer, padded_tokens_and_mask
from text2img.engines.glide.unet import Text2ImUNet, build_model

_MODELS: dict[str, Text2ImUNet] = {}


@pytest.fixture(autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def model_for(name: str) -> Text2ImUNet:
    if name not in _MODELS:
        data = read_json(f"{name}.cases.json")
        model = build_model(read_json(data["config"]))
        model.load_state_dict(read_tensors(data["weights"]), strict=True)
        _MODELS[name] = model
    return _MODELS[name]


def role(case: dict[str, Any], suffix: str, model: str) -> torch.Tensor | None:
    """The input tensor whose name ends with `.suffix` (None when the case has none)."""
    matches = [n for n in case["inputs"] if n.rsplit(".", 1)[-1] == suffix]
    return read_tensors(f"{model}.cases.safetensors")[matches[0]] if matches else None


def model_fn(model_name: str, case: dict[str, Any]):
    model = model_for(model_name)
    tokens, mask = role(case, "tokens", model_name), role(case, "mask", model_name)
    low_res = role(case, "low_res", model_name)

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x, t, tokens, mask, low_res=low_res)

    scale = case.get("guidance_scale")
    return classifier_free_guidance(fn, scale) if scale is not None else fn


def _ids(kind: str) -> list:
    return [pytest.param(item, id=case_id(item)) for item in cases(kind)] if reference_dir() else []


def test_models_match_their_listings():
    for name in {m for m, _ in cases()}:
        data = read_json(f"{name}.cases.json")
        state = model_for(name).state_dict()
        assert list(state) == data["state_dict_keys_in_order"]
        assert sum(v.numel() for v in state.values()) == data["num_params"]


@pytest.mark.parametrize("item", _ids("forward"))
def test_forward(item):
    model_name, case = item
    prefix = case["name"] + "."
    trace: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        trace["output"] = model_for(model_name)(
            role(case, "x_t", model_name),
            role(case, "timesteps", model_name),
            role(case, "tokens", model_name),
            role(case, "mask", model_name),
            low_res=role(case, "low_res", model_name),
            trace=trace,
        )
    for name in case["outputs"] + case.get("intermediates", []):
        key = name.removeprefix(prefix).removeprefix("inter.")
        assert_close(name, trace[key], model_name)
    for block, summary in case.get("block_output_summaries", {}).items():
        flat = trace[block].flatten()
        assert list(trace[block].shape) == summary["shape"], block
        probes = flat[summary["probe_flat_indices"]]
        torch.testing.assert_close(probes, torch.tensor(summary["probe_values"]), atol=5e-4, rtol=0)
        assert abs(flat.mean().item() - summary["mean"]) < 1e-4, block


@pytest.mark.parametrize("item", _ids("forward"))
def test_prompt_tokens(item):
    model_name, case = item
    folder = reference_dir()
    assert folder is not None
    tokenizer = BPETokenizer.from_files(
        folder / "tokenizer" / "encoder.json.gz", folder / "tokenizer" / "vocab.bpe.gz"
    )
    tokens, mask = role(case, "tokens", model_name), role(case, "mask", model_name)
    assert tokens is not None
    assert mask is not None
    for row, (prompt, ids) in enumerate(
        zip(case["prompts"], case["prompt_token_ids"], strict=True)
    ):
        assert tokenizer.encode(prompt) == ids
        padded, row_mask = padded_tokens_and_mask(ids, tokens.shape[1], tokenizer.end_token)
        assert tokens[row].tolist() == padded
        assert mask[row].tolist() == row_mask


def _schedule(model_name: str, case: dict[str, Any]):
    config = read_json(f"{model_name}.config.json")
    schedule = make_schedule(case["noise_schedule"], case["respacing"], config["diffusion_steps"])
    if "timestep_map" in case:
        assert schedule.timestep_map.tolist() == case["timestep_map"]
    return schedule


@pytest.mark.parametrize("item", _ids("p_mean_variance"))
def test_p_mean_variance(item):
    model_name, case = item
    schedule = _schedule(model_name, case)
    t = role(case, "t", model_name)
    x = role(case, "x", model_name)
    assert t is not None
    assert x is not None
    assert (t == case["respaced_index"]).all()
    assert schedule.timestep_map[case["respaced_index"]] == case["original_timestep"]
    with torch.inference_mode():
        out = p_mean_variance(
            model_fn(model_name, case),
            x,
            t,
            schedule,
            clip_denoised=case["clip_denoised"],
        )
    for name in case["outputs"]:
        field = name.rsplit(".", 1)[-1]
        value = (
            out.model_output
            if field in ("model_output", "model_fn_output")
            else getattr(out, field)
        )
        assert_close(name, value, model_name)


@pytest.mark.parametrize("item", _ids("ddim_sample_loop") + _ids("p_sample_loop"))
def test_sample_loop(item):
    model_name, case = item
    schedule = _schedule(model_name, case)
    tensors = read_tensors(f"{model_name}.cases.safetensors")
    starts = [n for n in case["inputs"] if n.rsplit(".", 1)[-1].startswith("noise")]
    assert len(starts) == 1
    x = tensors[starts[0]]
    if "upsample_temp" in case:  # the start is the unscaled noise times the temperature
        unscaled = tensors[starts[0].rsplit(".", 1)[0] + ".noise_unscaled"]
        assert torch.equal(unscaled * case["upsample_temp"], x)
    samples: list[torch.Tensor] = []
    preds: list[torch.Tensor] = []

    def record(info):
        if info.step in case["checkpoint_steps"]:
            samples.append(info.x)
            preds.append(info.pred_xstart)

    fn = model_fn(model_name, case)
    with torch.inference_mode():
        if case["kind"] == "ddim_sample_loop":
            final = sample_ddim(
                fn,
                x,
                schedule,
                eta=case["eta"],
                clip_denoised=case["clip_denoised"],
                callback=record,
            )
        else:
            step_noise = role(case, "step_noise", model_name)
            assert step_noise is not None
            assert len(step_noise) == schedule.num_steps
            final = sample_ancestral(
                fn,
                x,
                schedule,
                clip_denoised=case["clip_denoised"],
                noise_sampler=lambda k: step_noise[k],
                callback=record,
            )
    results = {
        "final_sample": final,
        "checkpoint_sample": torch.stack(samples),
        "checkpoint_pred_xstart": torch.stack(preds),
    }
    for name in case["outputs"]:
        assert_close(name, results[name.rsplit(".", 1)[-1]], model_name)
