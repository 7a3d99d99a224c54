"""The weights cache: ensure_weights, checkpoint checks, fp16 conversion, load_state_dict,
tokenizer_paths, against generated files served by a local HTTP server."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from glide_reference import require_dir
from safetensors import safe_open
from weights_helpers import (
    SHAPES_BASE,
    SHAPES_UPSAMPLE,
    TOKENIZER,
    FileServer,
    checkpoint_bytes,
    fake_manifest,
    local_only,  # noqa: F401  (autouse fixture: no proxy for 127.0.0.1)
    pin_files,
    random_state_dict,
    serve,
)

from text2img.engines import registry
from text2img.engines.fetch.http import RetryPolicy
from text2img.engines.glide import cache as glide_cache
from text2img.engines.glide import records as glide_records
from text2img.engines.glide.cache import tokenizer_paths
from text2img.engines.glide.convert import load_state_dict
from text2img.engines.glide.weights import ensure_weights
from text2img.errors import UserError

FAST = RetryPolicy(attempts=2, backoff_s=0.0)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("ckpt")
    out = {f"/{n}": d for n, d in TOKENIZER.items()}
    out["/base.pt"] = checkpoint_bytes(random_state_dict(SHAPES_BASE, 1), tmp)
    out["/upsample.pt"] = checkpoint_bytes(random_state_dict(SHAPES_UPSAMPLE, 2), tmp)
    return out


@pytest.fixture
def server(files) -> Iterator[FileServer]:
    yield from serve(dict(files))


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


def ensure(server: FileServer, cache: Path, **kw) -> None:
    kw.setdefault("manifest", fake_manifest(server.base_url))
    ensure_weights(cache, progress=False, retry=FAST, **kw)


def test_real_sources_are_the_defaults(monkeypatch):
    monkeypatch.delenv(glide_cache.URL_ENV, raising=False)
    m = glide_cache.default_manifest()
    assert [s.source.url for s in m.checkpoints] == [
        "https://openaipublic.blob.core.windows.net/diffusion/dec-2021/base.pt",
        "https://openaipublic.blob.core.windows.net/diffusion/dec-2021/upsample.pt",
    ]
    tok = "https://raw.githubusercontent.com/openai/glide-text2im/69b530740eb6cef69442d6180579ef5ba9ef063e/glide_text2im/tokenizer"
    assert [f.url for f in m.tokenizer] == [f"{tok}/encoder.json.gz", f"{tok}/vocab.bpe.gz"]
    monkeypatch.setenv(glide_cache.URL_ENV, "https://mirror.example/glide/")
    m = glide_cache.default_manifest()
    urls = [s.source.url for s in m.checkpoints] + [f.url for f in m.tokenizer]
    assert urls == [
        f"https://mirror.example/glide/{n}"
        for n in ("base.pt", "upsample.pt", "encoder.json.gz", "vocab.bpe.gz")
    ]


def test_checkpoint_specs_match_the_reference_listings():
    listings = sorted(require_dir().glob("*_params.json"))
    assert [p.name for p in listings] == ["base_params.json", "upsample_params.json"]
    m = glide_cache.default_manifest()
    for path in listings:
        ref = json.loads(path.read_text())
        spec = m.checkpoint(path.name.removesuffix("_params.json"))
        assert spec.num_params == ref["total_params"]
        assert spec.num_tensors == ref["num_tensors"] == len(ref["shapes"])
        assert spec.listing_sha256 == glide_cache.listing_fingerprint(ref["shapes"])


def test_tokenizer_hashes_match_the_reference_files():
    for rf in glide_cache.default_manifest().tokenizer:
        data = (require_dir() / rf.name).read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (rf.sha256, rf.size)


def test_default_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(registry.CACHE_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert glide_cache.default_cache_dir() == tmp_path / "home" / ".cache" / "text2img"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert glide_cache.default_cache_dir() == tmp_path / "xdg" / "text2img"
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "models"))
    assert glide_cache.default_cache_dir() == tmp_path / "models"


def test_fresh_download_converts_to_fp16_once_and_is_idempotent(server, cache):
    ensure(server, cache)
    names = {p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file()}
    assert names == {
        ".lock",
        "manifest.json",
        "base.pt",
        "upsample.pt",
        "base.fp16.safetensors",
        "upsample.fp16.safetensors",
        "tokenizer/encoder.json.gz",
        "tokenizer/vocab.bpe.gz",
    }
    with safe_open(str(cache / "base.fp16.safetensors"), "pt") as f:
        meta = f.metadata()
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}  # noqa: SIM118
    assert glide_cache.cache_metadata(cache / "base.fp16.safetensors") == meta  # own header reader
    pt = cache / "base.pt"
    assert meta["text2img_source_sha256"] == hashlib.sha256(pt.read_bytes()).hexdigest()
    assert meta["text2img_source_size"] == str(pt.stat().st_size)
    n_requests = len(server.requests)
    stamp = (cache / "base.fp16.safetensors").stat().st_mtime_ns
    ensure(server, cache)  # second run: nothing fetched, nothing converted again
    assert len(server.requests) == n_requests
    assert (cache / "base.fp16.safetensors").stat().st_mtime_ns == stamp
    enc, vocab = tokenizer_paths(cache, manifest=fake_manifest(server.base_url))
    assert enc.read_bytes() == TOKENIZER["encoder.json.gz"]
    assert vocab.read_bytes() == TOKENIZER["vocab.bpe.gz"]


def test_load_state_dict_reads_the_cache_without_the_pt(server, cache):
    manifest = fake_manifest(server.base_url)
    ensure(server, cache, only=["base"])
    source = random_state_dict(SHAPES_BASE, 1)
    (cache / "base.pt").unlink()  # the .pt is not read again: the cache alone suffices
    sd = load_state_dict(cache, "base", SHAPES_BASE, manifest=manifest)
    assert set(sd) == set(SHAPES_BASE)
    for k, v in sd.items():
        assert v.dtype == torch.float16
        torch.testing.assert_close(v, source[k].half(), rtol=0, atol=0)


def test_a_pt_copied_in_by_hand_converts_only_when_pinned(server, cache, tmp_path, monkeypatch):
    cache.mkdir()
    (cache / "upsample.pt").write_bytes(server.files["/upsample.pt"])  # copied in by hand
    with pytest.raises(UserError, match=r"cannot verify .*upsample.pt: no sha256 is pinned"):
        load_state_dict(cache, "upsample", SHAPES_UPSAMPLE, manifest=fake_manifest(server.base_url))
    assert (cache / "upsample.pt").exists()  # unverifiable is not damaged: the file stays
    pin_files(monkeypatch, tmp_path, {"upsample.pt": server.files["/upsample.pt"]})
    manifest = fake_manifest(server.base_url)
    sd = load_state_dict(cache, "upsample", SHAPES_UPSAMPLE, manifest=manifest)
    assert {v.dtype for v in sd.values()} == {torch.float16}
    stamp = (cache / "upsample.fp16.safetensors").stat().st_mtime_ns
    load_state_dict(cache, "upsample", SHAPES_UPSAMPLE, manifest=manifest)
    assert (cache / "upsample.fp16.safetensors").stat().st_mtime_ns == stamp
    assert server.requests == []


def test_a_pt_changed_after_download_is_never_adopted_nor_needed_to_start(server, cache):
    """Issue 13 item 5 without a pin: the download-time hash is the only one trusted."""
    manifest = fake_manifest(server.base_url)
    ensure(server, cache, only=["base"])
    recorded = glide_records.read_records(cache)["base.pt"]
    assert recorded["origin"] == "download"
    torch.save(random_state_dict(SHAPES_BASE, 7), cache / "base.pt")  # a valid, other file
    states = {s.name: s.state for s in glide_cache.weights_status(cache, manifest=manifest)}
    assert states["base.pt"] == "damaged"  # `download --check` names it
    # a start needs only what it loads (issue 20.7): the fp16 copy made from the
    # downloaded file is intact and is what loads; the other .pt is neither read nor adopted
    sd = load_state_dict(cache, "base", SHAPES_BASE, manifest=manifest)
    source = random_state_dict(SHAPES_BASE, 1)
    torch.testing.assert_close(sd["out.2.weight"], source["out.2.weight"].half(), rtol=0, atol=0)
    assert glide_records.read_records(cache)["base.pt"] == recorded  # the manifest kept its word
    ensure(server, cache, only=["base"])  # `download` fetches the right .pt back
    assert (cache / "base.pt").read_bytes() == server.files["/base.pt"]
    assert all(s.ok for s in glide_cache.weights_status(cache, manifest=manifest, only=["base"]))


def test_strict_key_and_shape_errors_name_the_keys(server, cache):
    manifest = fake_manifest(server.base_url)
    ensure(server, cache, only=["base"])
    expected = dict(SHAPES_BASE)
    del expected["token_embedding.weight"]
    expected["final_ln.weight"] = (16,)
    expected["out.2.weight"] = (6, 32, 1, 1)
    with pytest.raises(UserError) as err:
        load_state_dict(cache, "base", expected, manifest=manifest)
    msg = str(err.value)
    assert "missing keys: final_ln.weight" in msg
    assert "unexpected keys: token_embedding.weight" in msg
    assert "wrong shapes for out.2.weight (e.g. out.2.weight: (6, 32, 3, 3), expected" in msg


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"<!DOCTYPE html><html><body>Sign in to the Wi-Fi</body></html>", "HTML"),
        (b"\x00\x01 random bytes, not a pickle", "not a PyTorch weights file"),
        (pickle.dumps({"w": (1, 2, 3)}, protocol=2), "not a PyTorch weights file"),
        ("list", "holds a list, not a state dict"),
        ("ints", "entries are not float tensors"),
        ("keys", r"not the GLIDE base checkpoint \(its key names or shapes differ\)"),
        ("count", r"it holds 1 tensors with 12 values, GLIDE base has 5 with"),
    ],
)
def test_wrong_content_is_not_a_glide_checkpoint(server, cache, tmp_path, content, why):
    if content == "list":
        content = checkpoint_bytes([torch.zeros(2)], tmp_path)
    elif content == "ints":
        content = checkpoint_bytes({"step": torch.tensor(3)}, tmp_path)
    elif content == "keys":
        renamed = {f"model.{k}": v for k, v in random_state_dict(SHAPES_BASE, 1).items()}
        content = checkpoint_bytes(renamed, tmp_path)
    elif content == "count":
        content = checkpoint_bytes({"w": torch.zeros(3, 4)}, tmp_path)
    server.files["/base.pt"] = content
    with pytest.raises(UserError, match=why) as err:
        ensure(server, cache, only=["base"])
    assert "run `text2img download --model glide --only base`" in str(err.value)
    assert not (cache / "base.pt").exists()  # deleted, so that a re-run fetches it again


def test_nan_in_a_checkpoint_is_reported(server, cache, tmp_path):
    bad = random_state_dict(SHAPES_BASE, 1)
    bad["input_blocks.0.0.bias"][3] = float("nan")
    server.files["/base.pt"] = checkpoint_bytes(bad, tmp_path)
    with pytest.raises(UserError, match=r"NaN/inf values in input_blocks.0.0.bias"):
        ensure(server, cache, only=["base"])


def test_values_beyond_fp16_range_stay_fp32(server, cache, tmp_path):
    big = random_state_dict(SHAPES_BASE, 1)
    big["input_blocks.0.0.bias"][0] = 1e6
    server.files["/base.pt"] = checkpoint_bytes(big, tmp_path)
    ensure(server, cache, only=["base"])
    sd = load_state_dict(cache, "base", SHAPES_BASE, manifest=fake_manifest(server.base_url))
    assert sd["input_blocks.0.0.bias"].dtype == torch.float32
    assert sd["input_blocks.0.0.bias"][0].item() == 1e6
    assert sd["out.2.weight"].dtype == torch.float16


def test_missing_weights_say_to_run_download(cache):
    with pytest.raises(UserError, match=r"not in .*: run `text2img download --model glide`"):
        load_state_dict(cache, "base", SHAPES_BASE, manifest=fake_manifest("http://unused"))
    with pytest.raises(
        UserError, match=r"tokenizer file .* is missing: run `text2img download --model glide`"
    ):
        tokenizer_paths(cache, manifest=fake_manifest("http://unused"))


def test_damaged_cache_without_pt_is_a_user_error(server, cache):
    manifest = fake_manifest(server.base_url)
    ensure(server, cache, only=["base"])
    (cache / "base.pt").unlink()
    cached = cache / "base.fp16.safetensors"
    cached.write_bytes(cached.read_bytes()[:-100])  # truncated on disk
    with pytest.raises(UserError, match="run `text2img download --model glide`"):
        load_state_dict(cache, "base", SHAPES_BASE, manifest=manifest)
    ensure(server, cache, only=["base"])  # the download repairs it
    assert (
        load_state_dict(cache, "base", SHAPES_BASE, manifest=manifest).keys() == SHAPES_BASE.keys()
    )


def test_damaged_tokenizer_file_is_detected_and_refetched(server, cache):
    manifest = fake_manifest(server.base_url)
    ensure(server, cache, only=["tokenizer"])
    vocab = cache / "tokenizer" / "vocab.bpe.gz"
    vocab.write_bytes(b"garbage")
    with pytest.raises(UserError, match=r"damaged .*--force --only tokenizer"):
        tokenizer_paths(cache, manifest=manifest)
    states = {s.name: s.state for s in glide_cache.weights_status(cache, manifest=manifest)}
    assert states == {
        "encoder.json.gz": "ok",
        "vocab.bpe.gz": "damaged",
        "base": "missing",
        "upsample": "missing",
    }
    ensure(server, cache, only=["tokenizer"])
    assert tokenizer_paths(cache, manifest=manifest)[1].read_bytes() == TOKENIZER["vocab.bpe.gz"]


def test_resumed_checkpoint_download_is_intact(server, cache):
    server.drop_after, server.drops_left = 1000, 1
    ensure(server, cache, only=["upsample"])
    assert (cache / "upsample.pt").read_bytes() == server.files["/upsample.pt"]
    assert [r.status for r in server.requests] == [200, 206]


def test_disk_full_during_conversion_is_a_user_error(server, cache):
    ensure(server, cache, only=["base"])
    (cache / "base.fp16.safetensors").unlink()
    tmp = cache / "base.fp16.safetensors.tmp"
    tmp.symlink_to("/dev/full")
    with pytest.raises(UserError, match=r"disk full while writing .*base.fp16.safetensors.tmp"):
        ensure(server, cache, only=["base"])
    assert not tmp.exists()


def test_check_rehashes_and_finds_a_damaged_cache_file(server, cache):
    manifest = fake_manifest(server.base_url)
    ensure(server, cache, only=["base"])
    assert all(s.ok for s in glide_cache.weights_status(cache, manifest=manifest, only=["base"]))
    cached = cache / "base.fp16.safetensors"
    data = bytearray(cached.read_bytes())
    data[-5] ^= 0x40  # bit rot in the tensor data: the header still parses
    cached.write_bytes(bytes(data))
    states = [(s.name, s.state) for s in glide_cache.weights_status(cache, manifest=manifest)]
    assert ("base", "damaged") in states
    assert ("base.pt", "ok") in states
    ensure(server, cache, only=["base"], force=True)
    assert all(s.ok for s in glide_cache.weights_status(cache, manifest=manifest, only=["base"]))


def test_read_only_cache_is_a_user_error(server, cache):
    ensure(server, cache, only=["tokenizer"])
    if os.geteuid() == 0:
        (cache / ".lock").unlink()
        (cache / ".lock").mkdir()  # root ignores permissions: make the lock unopenable instead
    else:
        cache.chmod(0o555)
    try:
        with pytest.raises(UserError, match=r"cannot write to the weights cache .*--cache-dir"):
            ensure(server, cache, only=["base"])
        # reading what is there still works without writing anything
        assert tokenizer_paths(cache, manifest=fake_manifest(server.base_url))
    finally:
        cache.chmod(0o755)


@pytest.mark.parametrize("name", ["base", "upsample"])
def test_the_released_models_pass_the_download_checks(name):
    """Contract with the engine: what `ensure_weights` accepts, the model loads strictly."""
    from text2img.engines.glide.checkpoints import expected_shapes

    expected = expected_shapes(name)  # the full-size model, built on the meta device
    spec = glide_cache.default_manifest().checkpoint(name)
    assert len(expected) == spec.num_tensors
    assert sum(torch.Size(s).numel() for s in expected.values()) == spec.num_params
    assert glide_cache.listing_fingerprint(expected) == spec.listing_sha256


def test_a_second_process_waits_for_the_cache_lock(server, cache, capfd):
    import fcntl
    import threading

    cache.mkdir()
    holder = (cache / ".lock").open("a")
    fcntl.flock(holder, fcntl.LOCK_EX)  # another process is downloading
    release = threading.Timer(0.5, lambda: fcntl.flock(holder, fcntl.LOCK_UN))
    release.start()
    try:
        ensure_weights(cache, progress=True, only=["tokenizer"], retry=FAST,
                       manifest=fake_manifest(server.base_url))  # fmt: skip
    finally:
        release.join()
        holder.close()
    assert f"waiting for another text2img process using {cache}" in capfd.readouterr().err
    assert (cache / "tokenizer" / "vocab.bpe.gz").read_bytes() == TOKENIZER["vocab.bpe.gz"]


def test_legacy_torch_save_format_is_accepted(server, cache, tmp_path):
    legacy = tmp_path / "legacy.pt"
    source = random_state_dict(SHAPES_BASE, 3)
    torch.save(source, legacy, _use_new_zipfile_serialization=False)  # pre-1.6 container
    server.files["/base.pt"] = legacy.read_bytes()
    ensure(server, cache, only=["base"])
    sd = load_state_dict(cache, "base", SHAPES_BASE, manifest=fake_manifest(server.base_url))
    torch.testing.assert_close(sd["out.2.weight"], source["out.2.weight"].half(), rtol=0, atol=0)


def test_a_copied_cache_is_hashed_once_then_trusted_again(server, cache, monkeypatch):
    manifest = fake_manifest(server.base_url)
    ensure(server, cache, only=["base"])
    pt = cache / "base.pt"
    os.utime(pt, ns=(1, 1))  # what `cp -r` without -p does to mtimes
    hashed: list[Path] = []
    real = glide_records.sha256_file

    def counting(path: Path) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(glide_records, "sha256_file", counting)
    ensure(server, cache, only=["base"])  # hashes base.pt once, finds it unchanged
    assert hashed == [pt]
    load_state_dict(cache, "base", SHAPES_BASE, manifest=manifest)
    ensure(server, cache, only=["base"])
    assert hashed == [pt]  # trusted from the refreshed record
