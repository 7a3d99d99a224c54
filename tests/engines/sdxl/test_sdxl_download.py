"""`text2img download --model sdxl-lightning` against a local fake Hub: real huggingface_hub."""

from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from tests.engines.sdxl.sdxl_support import FakeHub
from text2img.engines.base import ImageRequest
from text2img.engines.sdxl import files, weights
from text2img.engines.sdxl.engine import SdxlEngine, _pipeline, load
from text2img.engines.sdxl.loading import load_components
from text2img.engines.sdxl.spec import SDXL_LIGHTNING
from text2img.engines.sdxl.tiny import TINY_UNET, TINY_VAE
from text2img.errors import UserError

RUN = "text2img download --model sdxl-lightning"
UNET4 = files.unet_file(4).path
VAE = "diffusion_pytorch_model.safetensors"


def gets(hub: FakeHub) -> list[tuple[str, str, str | None]]:
    return [entry for entry in hub.log if entry[0] == "GET"]


def cached(cache: Path, path: str) -> bytes:
    (hub_file,) = [f for f in files.FILES if f.path == path]
    return files.local_path(cache, hub_file).read_bytes()


def test_first_download_fetches_only_the_pinned_files_and_verifies_them(
    hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights.ensure(tmp_path, progress=True)
    assert "CreativeML Open RAIL++-M" in capsys.readouterr().err  # licence named at download
    assert all(s.ok for s in weights.status(tmp_path, deep=True))
    pinned = {f.revision for f in files.FILES}
    assert {p.split("/resolve/")[1].split("/")[0] for _, p, _ in hub.log} == pinned
    # one GET per distinct content in a repository: identical tokenizer files share a blob;
    # by default (4 steps only) neither the 2- nor the 8-step UNet (5.1 GB each) is fetched
    other_unets = {files.unet_file(2).path, files.unet_file(8).path}
    distinct = {(r, data) for (r, _, p), data in hub.content.items() if p not in other_unets}
    assert len(gets(hub)) == len(distinct) < len(files.FILES) - 2
    assert not [p for _, p, _ in gets(hub) if any(p.endswith(u) for u in other_unets)]
    assert (tmp_path / "huggingface" / "models--ByteDance--SDXL-Lightning").is_dir()
    assert (
        cached(tmp_path, UNET4)
        == hub.content[(files.LIGHTNING_REPO, files.LIGHTNING_REVISION, UNET4)]
    )
    hub.log.clear()
    weights.ensure(tmp_path, progress=False)  # complete: no request at all
    assert hub.log == []


def test_a_cut_connection_resumes_from_where_it_stopped(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # huggingface_hub writes (and so resumes from) whole chunks of 10 MB; our tiny UNet
    # is 0.2 MB, so make its chunks small enough for the cut to land after a few.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 8192)
    hub.cut = {UNET4}  # the first GET sends half the file, then closes the connection
    weights.ensure(tmp_path, progress=False)
    ranges = [rng for _, path, rng in gets(hub) if path.endswith(UNET4)]
    size = len(hub.content[(files.LIGHTNING_REPO, files.LIGHTNING_REVISION, UNET4)])
    assert len(ranges) == 2
    assert ranges[0] is None
    resumed_at = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert size // 2 - 8192 <= resumed_at <= size // 2
    assert (
        cached(tmp_path, UNET4)
        == hub.content[(files.LIGHTNING_REPO, files.LIGHTNING_REVISION, UNET4)]
    )
    assert all(s.ok for s in weights.status(tmp_path, deep=True))


def test_a_damaged_download_is_refused_and_not_kept(hub: FakeHub, tmp_path: Path) -> None:
    hub.corrupt = {VAE}
    with pytest.raises(UserError, match="arrived damaged") as err:
        weights.ensure(tmp_path, progress=False)
    assert RUN in str(err.value)
    vae = [s for s in weights.status(tmp_path, deep=True) if s.name.endswith(VAE)]
    assert vae[0].state == "missing"
    hub.corrupt = set()
    weights.ensure(tmp_path, progress=False)  # the next run fetches it again
    assert all(s.ok for s in weights.status(tmp_path, deep=True))


def test_a_file_damaged_in_the_cache_is_found_then_fetched_again(
    hub: FakeHub, tmp_path: Path
) -> None:
    weights.ensure(tmp_path, progress=False)
    (hub_file,) = [f for f in files.FILES if f.path == "tokenizer/vocab.json"]
    blob = files.local_path(tmp_path, hub_file).resolve()
    blob.write_bytes(blob.read_bytes().replace(b"<|endoftext|>", b"<|endoftexT|>"))
    states = {s.name: s.state for s in weights.status(tmp_path, deep=False)}
    assert states[hub_file.label] == "damaged"
    with pytest.raises(UserError, match="refusing to load damaged weights") as err:
        load_components(tmp_path, torch.device("cpu"), torch.float32, 4,
                        unet_config=TINY_UNET, vae_config=TINY_VAE)  # fmt: skip
    assert hub_file.label in str(err.value)
    assert f"run `{RUN}` to fetch" in str(err.value)  # the one command, no --force
    hub.log.clear()
    weights.ensure(tmp_path, progress=False)
    assert [p for _, p, _ in gets(hub)] == [
        f"/{hub_file.repo}/resolve/{hub_file.revision}/{hub_file.path}"
    ]
    assert all(s.ok for s in weights.status(tmp_path, deep=True))


def test_offline_with_a_complete_cache_loads_and_draws(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEXT2IMG_SDXL_STEPS", "2,4,8")  # the deployment serves 2 steps too
    weights.ensure(tmp_path, progress=False)
    assert files.local_path(tmp_path, files.unet_file(8)).exists()
    hub.log.clear()
    hub.refuse = True  # any request would now fail
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    weights.ensure(tmp_path, progress=False)
    weights.require(tmp_path)
    cpu = torch.device("cpu")
    parts = load_components(
        tmp_path, cpu, torch.float32, 4, unet_config=TINY_UNET, vae_config=TINY_VAE
    )
    assert not any(
        t.is_meta for m in (parts["unet"], parts["vae"]) for t in m.state_dict().values()
    )
    engine = SdxlEngine(SDXL_LIGHTNING, _pipeline(parts), device=cpu, dtype=torch.float32,
                        max_batch=2, cache_dir=tmp_path, steps_loaded=4)  # fmt: skip
    settings = SDXL_LIGHTNING.settings(steps=2)  # swaps in the 2-step UNet from the cache
    (image,) = engine.generate([ImageRequest("a lighthouse", 1)], settings)
    assert image.image.size == (1024, 1024)
    from safetensors.torch import load as load_bytes

    two_step = load_bytes(
        hub.content[(files.LIGHTNING_REPO, files.LIGHTNING_REVISION, files.unet_file(2).path)]
    )
    assert torch.equal(
        engine.pipe.unet.state_dict()["conv_in.weight"], two_step["conv_in.weight"].float()
    )
    assert hub.log == []


def test_offline_with_an_incomplete_cache_says_what_to_run(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="HF_HUB_OFFLINE") as err:
        weights.ensure(tmp_path, progress=False)
    assert RUN in str(err.value)
    with pytest.raises(UserError, match=RUN):
        load(SDXL_LIGHTNING, device="cpu", cache_dir=tmp_path)
    assert hub.log == []


def test_no_network_says_to_check_it_or_use_a_mirror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(UserError, match="cannot reach the Hugging Face Hub") as err:
        weights.ensure(tmp_path, progress=False)
    assert "HF_ENDPOINT" in str(err.value)
    assert RUN in str(err.value)


def test_too_little_disk_space_is_refused_before_any_download(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(UserError, match="not enough disk space") as err:
        weights.ensure(tmp_path, progress=False)
    assert "TEXT2IMG_MODEL_CACHE" in str(err.value)
    assert gets(hub) == []
