"""Damaged weights are never drawn (issue 20.4, 21.1): every byte a load reads is hashed
against the Hub's etag, in every layout huggingface_hub makes (classic blobs, the Xet
shared store of huggingface_hub >= 2.4) and in a plain `cp -rL` copy of the cache."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

from tests.engines.sdxl.sdxl_support import FakeHub
from text2img.engines.base import Cancelled, ImageRequest, Progress
from text2img.engines.sdxl import files, verify, weights
from text2img.engines.sdxl.engine import SdxlEngine, _pipeline
from text2img.engines.sdxl.loading import load_components
from text2img.engines.sdxl.spec import SDXL_LIGHTNING
from text2img.engines.sdxl.tiny import TINY_UNET, TINY_VAE
from text2img.errors import UserError

RUN = "text2img download --model sdxl-lightning"
CPU = torch.device("cpu")


def load(cache: Path, steps: int = 4) -> dict[str, object]:
    return load_components(
        cache, CPU, torch.float32, steps, unet_config=TINY_UNET, vae_config=TINY_VAE
    )


def pointer(cache: Path, hub_file: files.HubFile) -> Path:
    return files.local_path(cache, hub_file)


VAE_PATH = "diffusion_pytorch_model.safetensors"
VAE = files.HubFile(files.VAE_REPO, files.VAE_REVISION, VAE_PATH, "vae")
UNET4 = files.unet_file(4)


def overwrite(path: Path, offset: int, data: bytes) -> None:
    """Change bytes in place and put the modification time back, as a bad disk would."""
    real = path.resolve()
    st = real.stat()
    real.chmod(st.st_mode | stat.S_IWUSR)  # huggingface_hub makes store entries read-only
    with real.open("r+b") as f:
        f.seek(offset)
        f.write(data)
    os.utime(real, ns=(st.st_atime_ns, st.st_mtime_ns))
    real.chmod(st.st_mode)


def flip(path: Path, offset: int) -> None:
    byte = path.resolve().read_bytes()[offset]
    overwrite(path, offset, bytes([byte ^ 0x01]))


def zero_64k(path: Path) -> None:
    size = path.resolve().stat().st_size
    length = min(64 * 1024, size // 2)
    overwrite(path, size - length - 16, b"\0" * length)


DAMAGE = {"64 KiB zeroed, mtime kept": zero_64k, "one byte flipped": lambda p: flip(p, -3)}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
@pytest.mark.parametrize("hub_file", [UNET4, VAE], ids=["unet", "vae"])
def test_damage_inside_a_verified_file_is_refused_at_load(
    hub: FakeHub, tmp_path: Path, damage: object, hub_file: files.HubFile
) -> None:
    weights.ensure(tmp_path, progress=False)
    load(tmp_path)  # intact: loads (and leaves size+mtime records behind)
    target = pointer(tmp_path, hub_file)
    if damage is DAMAGE["one byte flipped"]:
        flip(target, target.resolve().stat().st_size - 3)
    else:
        zero_64k(target)
    weights.require(tmp_path)  # present: only hashing can tell
    with pytest.raises(UserError, match="refusing to load damaged weights") as err:
        load(tmp_path)
    assert hub_file.label in str(err.value)
    assert f"run `{RUN}` to fetch it again" in str(err.value)
    # the one command fixes it: the load dropped the quick record, download re-hashes
    hub.log.clear()
    weights.ensure(tmp_path, progress=False)
    assert [p for m, p, _ in hub.log if m == "GET"] == [
        f"/{hub_file.repo}/resolve/{hub_file.revision}/{hub_file.path}"
    ]
    load(tmp_path)


def test_the_xet_shared_store_layout_is_verified_and_removed(hub: FakeHub, tmp_path: Path) -> None:
    from huggingface_hub.utils._shared_blobs import publish_blob_to_shared_store

    weights.ensure(tmp_path, progress=False)
    hub_cache = files.hub_cache(tmp_path)
    link = pointer(tmp_path, UNET4)
    blob = verify.first_link(link)
    assert blob is not None
    data = blob.read_bytes()
    xet_hash = hashlib_sha256(b"xet" + data)  # any 64-hex id: the store is keyed by it
    # huggingface_hub's own publish step, as hf_hub_download runs it after a Xet download
    assert publish_blob_to_shared_store(
        blob_path=str(blob), xet_hash=xet_hash, cache_dir=hub_cache, expected_size=len(data)
    )
    store = hub_cache / "blobs" / xet_hash[:2] / xet_hash
    assert blob.is_symlink()
    assert link.resolve() == store.resolve()
    assert verify.link_etag(link) == blob.name  # the first link's name: the LFS sha256
    states = {s.name: s.state for s in weights.status(tmp_path, deep=True)}
    assert states[UNET4.label] == "ok"
    load(tmp_path)

    flip(store, 100)
    states = {s.name: s.state for s in weights.status(tmp_path, deep=True)}
    assert states[UNET4.label] == "damaged"
    with pytest.raises(UserError, match="refusing to load damaged weights"):
        load(tmp_path)
    verify.remove(link)  # link, repo blob AND the store entry (reused on size alone)
    assert not store.exists()
    assert not blob.is_symlink()
    assert not blob.exists()
    hub.log.clear()
    weights.ensure(tmp_path, progress=False)
    assert len([p for m, p, _ in hub.log if m == "GET" and p.endswith(UNET4.path)]) == 1
    assert link.read_bytes() == data
    load(tmp_path)


def hashlib_sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_a_plain_cp_rL_copy_is_verified_too(hub: FakeHub, tmp_path: Path) -> None:
    weights.ensure(tmp_path / "orig", progress=False)
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "orig", copy, symlinks=False)  # `cp -rL`: no links left
    target = pointer(copy, UNET4)
    assert not target.is_symlink()
    load(copy)  # intact plain files load: their Hub hashes were recorded with the cache
    zero_64k(target)
    with pytest.raises(UserError, match="refusing to load damaged weights") as err:
        load(copy)
    assert UNET4.label in str(err.value)
    # a copy that lost the record of hashes is not trusted either: download fetches anew
    (files.hub_cache(copy) / verify.ETAGS).unlink()
    with pytest.raises(UserError, match="no recorded Hub hash") as err:
        weights.require(copy)
    assert RUN in str(err.value)
    with pytest.raises(UserError, match="no recorded Hub hash"):
        load(copy)
    weights.ensure(copy, progress=False)
    load(copy)
    assert all(s.ok for s in weights.status(copy, deep=True))


@pytest.fixture
def served(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SdxlEngine:
    """A loaded engine over the fake Hub's files, serving 2, 4 and 8 steps."""
    monkeypatch.setenv("TEXT2IMG_SDXL_STEPS", "2,4,8")
    weights.ensure(tmp_path, progress=False)
    return SdxlEngine(SDXL_LIGHTNING, _pipeline(load(tmp_path)), device=CPU,
                      dtype=torch.float32, max_batch=2, cache_dir=tmp_path,
                      steps_loaded=4)  # fmt: skip


def conv_in_of(hub: FakeHub, steps: int) -> torch.Tensor:
    from safetensors.torch import load as load_bytes

    key = (files.LIGHTNING_REPO, files.LIGHTNING_REVISION, files.unet_file(steps).path)
    return load_bytes(hub.content[key])["conv_in.weight"].float()


def swaps(engine: SdxlEngine, steps: int) -> list[Progress]:
    events: list[Progress] = []
    engine.generate([ImageRequest("a", 1)], SDXL_LIGHTNING.settings(steps=steps),
                    progress=events.append)  # fmt: skip
    return [e for e in events if e.stage == "load_unet"]


def test_the_unet_on_the_device_is_swapped_once_per_change(
    served: SdxlEngine, hub: FakeHub
) -> None:
    assert swaps(served, 4) == []  # loaded at start
    loaded = swaps(served, 2)
    assert loaded
    assert loaded[-1].step == loaded[-1].total  # a progress stage of its own ...
    assert "load_unet" in SDXL_LIGHTNING.stages  # ... with a label for the web UI
    assert torch.equal(served.pipe.unet.conv_in.weight, conv_in_of(hub, 2))
    assert swaps(served, 2) == []  # kept: no 5 GB re-read for the next 2-step batch
    assert swaps(served, 8)
    assert torch.equal(served.pipe.unet.conv_in.weight, conv_in_of(hub, 8))
    assert swaps(served, 4)
    assert torch.equal(served.pipe.unet.conv_in.weight, conv_in_of(hub, 4))


def test_a_damaged_or_cancelled_swap_never_draws_and_recovers(
    served: SdxlEngine, hub: FakeHub, tmp_path: Path
) -> None:
    flip(pointer(tmp_path, files.unet_file(2)), 4000)
    with pytest.raises(UserError, match="refusing to load damaged weights"):
        served.generate([ImageRequest("a", 1)], SDXL_LIGHTNING.settings(steps=2))
    # half-overwritten weights are not mistaken for the 4-step UNet: it is loaded again
    assert swaps(served, 4)
    assert torch.equal(served.pipe.unet.conv_in.weight, conv_in_of(hub, 4))

    polls: list[int] = []

    def cancel_mid_swap() -> bool:
        polls.append(1)
        return len(polls) > 5

    events: list[Progress] = []
    with pytest.raises(Cancelled):
        served.generate([ImageRequest("a", 1)], SDXL_LIGHTNING.settings(steps=8),
                        progress=events.append, should_cancel=cancel_mid_swap)  # fmt: skip
    assert len(polls) == 6  # polled between tensors, stopped at once ...
    assert events  # ... inside the swap: no UNet call ran
    assert {e.stage for e in events} == {"load_unet"}
    assert events[-1].step < events[-1].total
    assert swaps(served, 4)  # the cancelled swap left nothing usable: reloaded
    assert torch.equal(served.pipe.unet.conv_in.weight, conv_in_of(hub, 4))


def test_a_link_to_a_file_not_named_by_its_hash_is_checked_against_the_record(
    hub: FakeHub, tmp_path: Path
) -> None:
    weights.ensure(tmp_path, progress=False)
    link = pointer(tmp_path, VAE)
    mine = tmp_path / "my-vae.safetensors"  # a link to a file of one's own
    mine.write_bytes(link.read_bytes())
    link.unlink()
    link.symlink_to(mine)
    assert verify.link_etag(link) is None  # its name says nothing of its content ...
    states = {s.name: s.state for s in weights.status(tmp_path, deep=True)}
    assert states[VAE.label] == "ok"  # ... the etag recorded for the path does
    load(tmp_path)
    flip(mine, 5000)
    states = {s.name: s.state for s in weights.status(tmp_path, deep=True)}
    assert states[VAE.label] == "damaged"
    with pytest.raises(UserError, match="refusing to load damaged weights"):
        load(tmp_path)


def test_a_cancelled_load_stops_its_hashing_at_once(tmp_path: Path) -> None:
    """Cancelling must not wait for a 5 GB hash: the hashing thread gives up (so it never
    completes, and never records the file as verified)."""
    import hashlib

    hub_cache = tmp_path / "huggingface"
    blobs = hub_cache / "models--org--name" / "blobs"
    blobs.mkdir(parents=True)
    size = 256 * 1024 * 1024
    etag = hashlib.sha256(bytes(size)).hexdigest()
    with (blobs / etag).open("wb") as f:
        f.truncate(size)  # zeros, sparse: no disk used
    link = hub_cache / "models--org--name" / "snapshots" / "rev" / "unet.safetensors"
    link.parent.mkdir(parents=True)
    link.symlink_to(os.path.relpath(blobs / etag, link.parent))
    with pytest.raises(Cancelled), verify.Hashing(hub_cache, [(link, "org/name/unet")], RUN):
        raise Cancelled("cancelled")
    assert not (hub_cache / verify.RECORDS).exists()
    with verify.Hashing(hub_cache, [(link, "org/name/unet")], RUN):
        pass  # not cancelled: hashed in full, and remembered
    assert json.loads((hub_cache / verify.RECORDS).read_text())
