"""Damaged weights are refused, not served (issue 13 items 4 and 5): 1 MiB overwritten
inside a same-size fp16 copy or `.pt`, against files of the real formats served by a local
HTTP server, with pins injected the documented way ($TEXT2IMG_WEIGHTS_PINS)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from weights_helpers import (
    TOKENIZER,
    FileServer,
    checkpoint_bytes,
    local_only,  # noqa: F401  (autouse fixture: no proxy for 127.0.0.1)
    pin_files,
    random_state_dict,
    serve,
)

from text2img import cli
from text2img.engines.fetch.http import RetryPolicy
from text2img.engines.glide import cache as glide_cache
from text2img.engines.glide import records as glide_records
from text2img.engines.glide.cache import CheckpointSpec, Manifest, RemoteFile
from text2img.engines.glide.convert import load_state_dict
from text2img.engines.glide.weights import ensure_weights
from text2img.errors import UserError

MIB = 1 << 20
# big enough that 1 MiB lies well inside the data: 4 MiB as fp32 .pt, 2 MiB as fp16
SHAPES = {"input_blocks.0.0.weight": (1024, 1024), "out.2.bias": (6,)}
FAST = RetryPolicy(attempts=2, backoff_s=0.0)


def manifest_for(base_url: str) -> Manifest:
    """One checkpoint ("base") of the shapes above, plus the test tokenizer files."""
    n = sum(torch.Size(s).numel() for s in SHAPES.values())
    base = CheckpointSpec(
        "base",
        glide_cache.pinned(RemoteFile("base.pt", f"{base_url}/base.pt")),
        num_tensors=len(SHAPES),
        num_params=n,
        listing_sha256=glide_cache.listing_fingerprint(SHAPES),
    )
    tok = [
        RemoteFile(f"tokenizer/{k}", f"{base_url}/{k}", hashlib.sha256(v).hexdigest(), len(v))
        for k, v in TOKENIZER.items()
    ]
    return Manifest(checkpoints=(base,), tokenizer=(tok[0], tok[1]))


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> bytes:
    return checkpoint_bytes(random_state_dict(SHAPES, 11), tmp_path_factory.mktemp("pt"))


@pytest.fixture
def server(released) -> Iterator[FileServer]:
    files = {f"/{n}": d for n, d in TOKENIZER.items()}
    files["/base.pt"] = released
    yield from serve(files)


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


def ensure(server: FileServer, cache: Path, **kw) -> None:
    ensure_weights(cache, progress=False, retry=FAST, manifest=manifest_for(server.base_url), **kw)


def overwrite_mib(path: Path, fill: bytes) -> None:
    """Overwrite 1 MiB in the middle of `path` in place: same size, header untouched."""
    size = path.stat().st_size
    assert size > 2 * MIB
    with path.open("r+b") as f:
        f.seek(size // 2 - MIB // 2)
        f.write(fill)
    assert path.stat().st_size == size


@pytest.mark.parametrize("fill", ["zeros", "random"])
def test_a_damaged_fp16_copy_is_refused_on_load_and_by_check(
    server, cache, fill, monkeypatch, capsys
):
    manifest = manifest_for(server.base_url)
    ensure(server, cache)
    cached = cache / "base.fp16.safetensors"
    loaded = load_state_dict(cache, "base", SHAPES, manifest=manifest)
    assert {v.dtype for v in loaded.values()} == {torch.float16}
    # (the tensors view the file's mapping, as safetensors' do: `load_released` copies them)
    good = {k: v.clone() for k, v in loaded.items()}
    del loaded
    (cache / "base.pt").unlink()  # as README allows: the service only reads the fp16 copy
    overwrite_mib(cached, bytes(MIB) if fill == "zeros" else os.urandom(MIB))
    assert glide_cache.cache_is_current(cache, manifest.checkpoint("base"))  # header intact
    with pytest.raises(UserError) as err:
        load_state_dict(cache, "base", SHAPES, manifest=manifest)
    msg = str(err.value)
    assert f"the GLIDE base weights {cached} are damaged" in msg
    assert "its bytes changed on disk" in msg
    assert "run `text2img download --model glide --force --only base`" in msg
    # `download --check` finds it too (and exits 1)
    monkeypatch.setattr(glide_cache, "default_manifest", lambda: manifest)
    assert cli.main(["download", "--cache-dir", str(cache), "--check", "--only", "base"]) == 1
    out = capsys.readouterr().out
    assert "base             damaged" in out
    assert "with --force for damaged files" in out
    ensure(server, cache, force=True)  # what the message says to run repairs it
    repaired = load_state_dict(cache, "base", SHAPES, manifest=manifest)
    for k, v in good.items():
        torch.testing.assert_close(repaired[k], v, rtol=0, atol=0)


def test_a_copy_written_before_the_embedded_hash_verifies_against_its_record(server, cache):
    """fp16 copies from before `DATA_SHA_KEY` still load, checked against manifest.json."""
    import safetensors.torch

    manifest = manifest_for(server.base_url)
    ensure(server, cache)
    cached = cache / "base.fp16.safetensors"
    tensors = safetensors.torch.load_file(str(cached))
    meta = glide_cache.cache_metadata(cached)
    assert meta is not None
    del meta[glide_cache.DATA_SHA_KEY]
    data = safetensors.torch.save(tensors, metadata=meta)
    cached.write_bytes(data)
    glide_records.record(cache, cached.name, hashlib.sha256(data).hexdigest(), "conversion")
    assert load_state_dict(cache, "base", SHAPES, manifest=manifest).keys() == SHAPES.keys()
    overwrite_mib(cached, bytes(MIB))
    with pytest.raises(UserError, match=r"damaged .*its bytes changed on disk"):
        load_state_dict(cache, "base", SHAPES, manifest=manifest)
    records = glide_records.read_records(cache)
    del records[cached.name]
    (cache / "manifest.json").write_text(json.dumps(records))
    with pytest.raises(UserError, match=r"damaged .*carries no checksum"):
        load_state_dict(cache, "base", SHAPES, manifest=manifest)


def test_a_zeroed_pt_is_refused_at_download_against_its_pin(server, cache, released, monkeypatch):
    pin_files(monkeypatch, cache.parent, {"base.pt": released})
    zeroed = bytearray(released)
    zeroed[len(zeroed) // 2 : len(zeroed) // 2 + MIB] = bytes(MIB)  # same size
    server.files["/base.pt"] = bytes(zeroed)
    with pytest.raises(UserError, match=r"downloaded base.pt .* is damaged: its sha256 is"):
        ensure(server, cache, only=["base"])
    assert not (cache / "base.pt").exists()
    assert not (cache / "base.fp16.safetensors").exists()
    assert "base.pt" not in glide_records.read_records(cache)  # nothing recorded
    server.files["/base.pt"] = released  # the right file passes
    ensure(server, cache, only=["base"])
    assert (
        glide_records.read_records(cache)["base.pt"]["sha256"]
        == hashlib.sha256(released).hexdigest()
    )


def test_a_zeroed_pt_is_refused_at_conversion_against_its_pin(
    server, cache, released, monkeypatch, capsys
):
    """The issue's case: a same-size base.pt with 1 MiB zeroed, converted again."""
    pin_files(monkeypatch, cache.parent, {"base.pt": released})
    manifest = manifest_for(server.base_url)
    ensure(server, cache, only=["base"])
    before = glide_records.read_records(cache)
    (cache / "base.fp16.safetensors").unlink()  # so that it must be converted again
    overwrite_mib(cache / "base.pt", bytes(MIB))
    monkeypatch.setattr(glide_cache, "default_manifest", lambda: manifest)
    assert cli.main(["download", "--cache-dir", str(cache), "--check", "--only", "base"]) == 1
    assert "base.pt          damaged" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"base.pt is not the released GLIDE base .* pinned\)"):
        load_state_dict(cache, "base", SHAPES, manifest=manifest)
    assert not (cache / "base.pt").exists()  # deleted: `download` fetches it again
    assert not (cache / "base.fp16.safetensors").exists()
    after = glide_records.read_records(cache)
    assert after["base.pt"] == before["base.pt"]  # the manifest never adopts the new hash
    ensure(server, cache, only=["base"])
    assert (cache / "base.pt").read_bytes() == released


def test_a_pin_mismatch_is_refused_before_the_transfer_by_size(
    server, cache, released, monkeypatch
):
    pins = pin_files(monkeypatch, cache.parent, {"base.pt": released + b"x"})
    with pytest.raises(UserError, match=r"base.pt is \d+ bytes but base.pt should be \d+ bytes"):
        ensure(server, cache, only=["base"])
    assert server.body_bytes("/base.pt") == 0
    pins.write_text('{"base.pt": {"sha256": "nothex", "size": 1}}')
    with pytest.raises(UserError, match=r"TEXT2IMG_WEIGHTS_PINS=.*not 64 hex digits"):
        manifest_for(server.base_url)


def test_the_released_checkpoints_are_unpinned_unless_pinned(monkeypatch, tmp_path):
    """What is pinned is stated, not guessed (see RELEASED_PINS): the override adds pins."""
    spec = glide_cache.default_manifest().checkpoint("base")
    assert (spec.source.sha256, spec.source.size) == (None, None)
    assert glide_cache.RELEASED_PINS == {}
    pin_files(monkeypatch, tmp_path, {"base.pt": b"abc"})
    spec = glide_cache.default_manifest().checkpoint("base")
    assert spec.source.sha256 == hashlib.sha256(b"abc").hexdigest()
    assert spec.source.size == 3


def test_download_replaces_a_pt_that_changed_since_it_was_downloaded(
    server, cache, released, capfd
):
    """No pin: `text2img download` fetches the file again instead of converting it."""
    ensure(server, cache, only=["base"])
    recorded = glide_records.read_records(cache)["base.pt"]
    (cache / "base.fp16.safetensors").unlink()
    overwrite_mib(cache / "base.pt", bytes(MIB))
    n = server.body_bytes("/base.pt")
    ensure(server, cache, only=["base"])
    assert "base.pt is not the file that was pinned or downloaded; fetching it again" in (
        capfd.readouterr().err
    )
    assert server.body_bytes("/base.pt") == n + len(released)
    assert (cache / "base.pt").read_bytes() == released
    assert glide_records.read_records(cache)["base.pt"]["sha256"] == recorded["sha256"]


def test_segment_digests_hash_each_segment_of_a_mapped_file_in_order(tmp_path, monkeypatch):
    """Many segments, fewer threads: each digest belongs to its own segment, in order."""
    from text2img.engines.fetch import disk as files

    monkeypatch.setattr(files, "SEGMENT", 64 * 1024)
    monkeypatch.setattr(files, "hash_threads", lambda: 3)
    data = os.urandom(files.SEGMENT * 9 + 123)
    path = tmp_path / "blob"
    path.write_bytes(b"HEAD" + data)
    want = [
        hashlib.sha256(data[i : i + files.SEGMENT]).hexdigest()
        for i in range(0, len(data), files.SEGMENT)
    ]
    assert len(want) == 10
    with path.open("rb") as f:
        mapped = memoryview(files.map_file(f))[4:]
    assert files.segment_digests(mapped) == want
    assert bytes(mapped) == data


def test_a_damaged_pt_does_not_stop_a_start_when_the_fp16_copy_is_intact(
    server, cache, released, monkeypatch
):
    """Issue 20.7: a start needs only what it loads (the fp16 copy verifies itself)."""
    manifest = manifest_for(server.base_url)
    ensure(server, cache, only=["base"])
    cached = cache / "base.fp16.safetensors"
    copy_before = cached.read_bytes()
    good = {
        k: v.clone() for k, v in load_state_dict(cache, "base", SHAPES, manifest=manifest).items()
    }
    overwrite_mib(cache / "base.pt", bytes(MIB))  # damaged, with a new mtime
    loaded = load_state_dict(cache, "base", SHAPES, manifest=manifest)
    for k, v in good.items():
        torch.testing.assert_close(loaded[k], v, rtol=0, atol=0)
    assert cached.read_bytes() == copy_before  # not converted again from the damaged .pt
    assert (cache / "base.pt").exists()  # nor the .pt judged: that is `download`'s job
    ensure(server, cache, only=["base"])  # ... which fetches it again
    assert (cache / "base.pt").read_bytes() == released
