"""The page-cache prefetch: what the startup script writes for text2img-prefetch.service
(from instance metadata `text2img-prefetch`, or the built-in selection), and what
systemd/prefetch.sh then reads. The boot order itself (prefetch before the service, on
a wake) is proven under a real systemd in tests/vm_twin."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.systemd.sandbox import REPO, Sandbox, env_file, rendered_metadata
from text2img.engines.registry import get_spec

PREFETCH_SH = REPO / "systemd" / "prefetch.sh"


def run_prefetch(sandbox: Sandbox) -> subprocess.CompletedProcess[str]:
    """systemd/prefetch.sh as text2img-prefetch.service runs it, on the sandbox's disk."""
    env = env_file(sandbox.path("/etc/text2img/prefetch.env"))
    cache = str(sandbox.root) + env["TEXT2IMG_PREFETCH_CACHE"]
    return subprocess.run(
        ["bash", str(PREFETCH_SH)],
        env={
            **sandbox.env(),
            "TEXT2IMG_PREFETCH_CACHE": cache,
            "TEXT2IMG_PREFETCH_PATTERNS": str(sandbox.path("/etc/text2img/prefetch.patterns")),
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def read_files(result: subprocess.CompletedProcess[str]) -> list[str]:
    line = next(x for x in result.stderr.splitlines() if "reading " in x)
    return sorted(line.split(": ", 2)[2].split())


def sdxl_cache(sandbox: Sandbox) -> list[str]:
    """huggingface_hub's layout under <cache>/huggingface (snapshot links to blobs); the
    paths a start reads, as the host sees them."""
    hub = sandbox.path("/var/lib/text2img/models/huggingface")
    wanted = []
    for repo, name in [
        ("models--ByteDance--SDXL-Lightning", "sdxl_lightning_4step_unet.safetensors"),
        ("models--ByteDance--SDXL-Lightning", "sdxl_lightning_2step_unet.safetensors"),
        ("models--ByteDance--SDXL-Lightning", "sdxl_lightning_8step_unet.safetensors"),
        ("models--x--base", "text_encoder/model.fp16.safetensors"),
        ("models--x--base", "text_encoder_2/model.fp16.safetensors"),
        ("models--x--base", "unet/diffusion_pytorch_model.fp16.safetensors"),
        ("models--x--vae", "diffusion_pytorch_model.safetensors"),
    ]:
        blob = hub / repo / "blobs" / name.replace("/", "-")
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(b"w" * 1024)
        link = hub / repo / "snapshots" / "rev" / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)
        if "_2step_" not in name and "_8step_" not in name and "unet/" not in name:
            wanted.append(str(link))
    (hub.parent / "base.pt").write_bytes(b"not read")
    return sorted(wanted)


@pytest.mark.parametrize("model", ["glide", "sdxl-lightning"])
def test_without_the_metadata_key_the_built_in_selection_is_the_engines_own(
    sandbox: Sandbox, model: str
) -> None:
    sandbox.google.attributes.update(rendered_metadata(model=model))
    sandbox.google.attributes.pop("text2img-prefetch", None)
    result = sandbox.run()
    assert result.returncode == 0, result.stderr
    assert "metadata 'text2img-prefetch' is not set" in result.stderr
    patterns = sandbox.path("/etc/text2img/prefetch.patterns").read_text().split("\n")
    assert tuple(p for p in patterns if p) == get_spec(model).prefetch
    env = env_file(sandbox.path("/etc/text2img/prefetch.env"))
    assert env == {"TEXT2IMG_PREFETCH_CACHE": "/var/lib/text2img/models"}
    assert ("enable", "text2img-prefetch.service") in [
        tuple(c[1:3]) for c in sandbox.calls("systemctl")
    ]


def test_the_metadata_patterns_are_used_and_read_the_start_files_only(
    sandbox: Sandbox,
) -> None:
    sandbox.google.attributes.update(rendered_metadata(model="sdxl-lightning"))
    patterns = "\n".join(get_spec("sdxl-lightning").prefetch)
    sandbox.google.attributes["text2img-prefetch"] = patterns
    assert sandbox.run().returncode == 0
    assert sandbox.path("/etc/text2img/prefetch.patterns").read_text() == patterns + "\n"

    first = run_prefetch(sandbox)  # first boot: nothing cached yet
    assert first.returncode == 0, first.stderr
    assert "nothing to prefetch" in first.stderr

    wanted = sdxl_cache(sandbox)
    result = run_prefetch(sandbox)
    assert result.returncode == 0, result.stderr
    assert read_files(result) == wanted  # the 4-step UNet, encoders, VAE; not 2/8 steps


def test_glide_reads_only_its_fp16_copies(sandbox: Sandbox) -> None:
    cache = sandbox.path("/var/lib/text2img/models")
    cache.mkdir(parents=True)
    for name in ("base.pt", "base.fp16.safetensors", "upsample.fp16.safetensors"):
        (cache / name).write_bytes(b"w")
    assert sandbox.run().returncode == 0
    result = run_prefetch(sandbox)
    assert [Path(p).name for p in read_files(result)] == [
        "base.fp16.safetensors",
        "upsample.fp16.safetensors",
    ]


@pytest.mark.parametrize("bad", ["/etc/shadow", "../../etc/*", "a b", "x;rm"])
def test_a_bad_pattern_in_the_metadata_is_refused(sandbox: Sandbox, bad: str) -> None:
    sandbox.google.attributes["text2img-prefetch"] = f"base.fp16.safetensors\n{bad}"
    result = sandbox.run()
    assert result.returncode == 1
    assert f"metadata 'text2img-prefetch' has the line '{bad}'" in result.stderr
