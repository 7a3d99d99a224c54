"""`text2img download` end to end against a local mirror (TEXT2IMG_WEIGHTS_URL)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from glide_reference import require_dir
from weights_helpers import (
    SHAPES_BASE,
    SHAPES_UPSAMPLE,
    TOKENIZER,
    FileServer,
    checkpoint_bytes,
    fake_manifest,
    local_only,  # noqa: F401  (autouse fixture: no proxy for 127.0.0.1)
    random_state_dict,
    serve,
)

from text2img import cli
from text2img.engines.fetch import http as download
from text2img.engines.glide import cache as glide_cache


@pytest.fixture
def mirror(tmp_path) -> Iterator[FileServer]:
    files = {f"/{n}": d for n, d in TOKENIZER.items()}
    files["/base.pt"] = checkpoint_bytes(random_state_dict(SHAPES_BASE, 1), tmp_path)
    files["/upsample.pt"] = checkpoint_bytes(random_state_dict(SHAPES_UPSAMPLE, 2), tmp_path)
    yield from serve(files)


@pytest.fixture
def fake_sources(mirror, monkeypatch) -> FileServer:
    """The command's manifest describes the generated files (real ones are too big)."""
    monkeypatch.setattr(glide_cache, "default_manifest", lambda: fake_manifest(mirror.base_url))
    return mirror


def test_download_all_then_check_then_quick_rerun(fake_sources, tmp_path, capsys):
    cache = tmp_path / "models"
    assert cli.main(["download", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith(f"glide weights ready in {cache} (")
    table = {line.split()[0]: line.split() for line in out[:-1]}
    assert set(table) == {
        "encoder.json.gz",
        "vocab.bpe.gz",
        "base.pt",
        "base",
        "upsample.pt",
        "upsample",
    }
    assert table["base"][1] == "ok"
    assert table["base"][-1] == str(cache / "base.fp16.safetensors")
    n = len(fake_sources.requests)
    assert cli.main(["download", "--cache-dir", str(cache), "--quiet"]) == 0
    assert len(fake_sources.requests) == n  # nothing fetched the second time
    assert capsys.readouterr().out.startswith(f"glide weights ready in {cache}")
    assert cli.main(["download", "--cache-dir", str(cache), "--check"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"all ready in {cache}")
    assert cli.main(["download", "--cache-dir", str(cache), "--force", "--only", "base"]) == 0
    assert [r.path for r in fake_sources.requests[n:]] == ["/base.pt"]


def test_check_reports_missing_without_network(fake_sources, tmp_path, capsys):
    cache = tmp_path / "models"
    assert cli.main(["download", "--cache-dir", str(cache), "--check", "--only", "base"]) == 1
    out = capsys.readouterr().out
    assert "base             missing" in out
    assert "1 of 1 not ready: run `text2img download --model glide`" in out
    assert fake_sources.requests == []


def test_real_tokenizer_files_from_a_mirror(tmp_path):
    """The real default manifest (real sha256 values), the env override, the real CLI."""
    files = {f"/{p.name}": p.read_bytes() for p in (require_dir() / "tokenizer").glob("*.gz")}
    assert sorted(files) == ["/encoder.json.gz", "/vocab.bpe.gz"]
    gen = serve(files)
    server = next(gen)
    try:  # (not a fixture: this test serves different files)
        env = dict(os.environ, TEXT2IMG_WEIGHTS_URL=server.base_url + "/")
        env["TEXT2IMG_MODEL_CACHE"] = str(tmp_path / "c")
        cmd = [sys.executable, "-m", "text2img.cli", "download", "--only", "tokenizer"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "downloading tokenizer/encoder.json.gz from http://127.0.0.1" in done.stderr
        assert f"{tmp_path / 'c' / 'tokenizer' / 'vocab.bpe.gz'}" in done.stdout
        enc, vocab = glide_cache.tokenizer_paths(tmp_path / "c")
        assert enc.read_bytes() == files["/encoder.json.gz"]
        assert vocab.read_bytes() == files["/vocab.bpe.gz"]
    finally:
        gen.close()


def test_no_network_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("TEXT2IMG_WEIGHTS_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(download.time, "sleep", lambda s: None)
    assert cli.main(["download", "--cache-dir", str(tmp_path), "--only", "tokenizer"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("text2img download: error: could not download tokenizer/")
    assert "cannot connect to 127.0.0.1" in err[-1]
    assert not any("Traceback" in line for line in err)


def test_random_weight_models_have_nothing_to_download(tmp_path, capsys):
    assert cli.main(["download", "--model", "tiny", "--cache-dir", str(tmp_path)]) == 0
    assert "nothing to download" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_only_names_the_models_parts(tmp_path, capsys):
    code = cli.main(
        ["download", "--model", "glide", "--cache-dir", str(tmp_path), "--only", "unet"]
    )
    assert code == 2
    assert "parts of model glide are base, upsample, tokenizer" in capsys.readouterr().err
