"""Image build helpers and infra/build_image.sh, the latter in a sandbox with a stub gcloud."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from infra_harness import ROOT

from infra.images import BuildError, check_digest_ref, context_files, context_hash

SCRIPT = ROOT / "infra" / "build_image.sh"
IMAGE = "asia-northeast1-docker.pkg.dev/proj/t2i-dev/text2img"
DIGEST = "sha256:" + "c" * 64

STUB = """#!/bin/bash
# stub gcloud: logs its arguments; `describe` answers from $STATE (empty = not found)
echo "$*" >> "$LOG"
case "$1 $2" in
  "artifacts docker")
    if [[ -s "$STATE" ]]; then cat "$STATE"; else echo "NOT_FOUND" >&2; exit 1; fi ;;
  "builds submit")
    [[ "${BUILD_FAILS:-}" == 1 ]] && { echo "ERROR: build failed" >&2; exit 1; }
    [[ "${BUILD_PUSHES:-1}" == 1 ]] && echo "$PUSHED" > "$STATE"
    echo "build done" ;;
esac
"""


@pytest.fixture
def sandbox(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "gcloud"
    stub.write_text(STUB)
    stub.chmod(0o755)
    return {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "LOG": str(tmp_path / "gcloud.log"),
        "STATE": str(tmp_path / "state"),
        "PUSHED": f"{IMAGE}@{DIGEST}",
        "T2I_PROJECT": "proj",
        "T2I_REGION": "asia-northeast1",
        "T2I_IMAGE": IMAGE,
        "T2I_TAG": "src-0123456789abcdef0123",
        "T2I_DOCKERFILE": "service/Dockerfile",
        "T2I_SERVICE_ACCOUNT": "projects/proj/serviceAccounts/b@proj.iam.gserviceaccount.com",
        "T2I_STAGING": "gs://proj-t2i-dev-build/source",
        "T2I_MACHINE_TYPE": "e2-highcpu-8",
    }


def run_script(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT)], env=env, cwd=cwd, capture_output=True, text=True, timeout=30
    )


def test_builds_then_prints_the_digest_reference(sandbox: dict[str, str], tmp_path: Path) -> None:
    result = run_script(sandbox, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{IMAGE}@{DIGEST}\n"  # the only stdout line
    calls = Path(sandbox["LOG"]).read_text().splitlines()
    submit = next(c for c in calls if c.startswith("builds submit"))
    for flag in (
        f"--substitutions _IMAGE={IMAGE}:src-0123456789abcdef0123,_DOCKERFILE=service/Dockerfile",
        "--service-account projects/proj/serviceAccounts/b@proj.iam.gserviceaccount.com",
        "--gcs-source-staging-dir gs://proj-t2i-dev-build/source",
        f"--config {ROOT}/infra/cloudbuild.yaml",
        f"--ignore-file {ROOT}/infra/build.gcloudignore",
        "--region asia-northeast1",
        "--machine-type e2-highcpu-8",
    ):
        assert flag in submit
    assert "build done" not in result.stdout


def test_existing_tag_is_reused_without_building(sandbox: dict[str, str], tmp_path: Path) -> None:
    Path(sandbox["STATE"]).write_text(f"{IMAGE}@{DIGEST}\n")
    result = run_script(sandbox, tmp_path)
    assert result.returncode == 0
    assert result.stdout == f"{IMAGE}@{DIGEST}\n"
    assert not any(c.startswith("builds") for c in Path(sandbox["LOG"]).read_text().splitlines())


def test_build_failure_fails_the_step(sandbox: dict[str, str], tmp_path: Path) -> None:
    result = run_script({**sandbox, "BUILD_FAILS": "1"}, tmp_path)
    assert result.returncode != 0
    assert result.stdout == ""


def test_unresolvable_digest_fails_clearly(sandbox: dict[str, str], tmp_path: Path) -> None:
    result = run_script({**sandbox, "BUILD_PUSHES": "0"}, tmp_path)
    assert result.returncode == 1
    assert "could not resolve" in result.stderr
    assert result.stdout == ""


def test_missing_setting_is_named(sandbox: dict[str, str], tmp_path: Path) -> None:
    env = {k: v for k, v in sandbox.items() if k != "T2I_STAGING"}
    result = run_script(env, tmp_path)
    assert result.returncode == 2
    assert "T2I_STAGING is not set" in result.stderr


def test_check_digest_ref() -> None:
    ref = f"{IMAGE}@{DIGEST}"
    assert check_digest_ref(f"some noise\n{ref}\n") == ref
    for bad in ("", f"{IMAGE}:latest", "Error: quota"):
        with pytest.raises(BuildError):
            check_digest_ref(bad)


def test_context_hash_follows_the_context(tmp_path: Path) -> None:
    (tmp_path / "service" / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    (tmp_path / "service" / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "service" / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"1")
    (tmp_path / "README.md").write_text("docs")
    first = context_hash("service/Dockerfile", tmp_path)
    assert [p.name for p in context_files(tmp_path)] == ["pyproject.toml", "a.py"]
    (tmp_path / "README.md").write_text("more docs")  # not part of the hash
    (tmp_path / "service" / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"2")
    assert context_hash("service/Dockerfile", tmp_path) == first
    assert context_hash("service/gateway.Dockerfile", tmp_path) != first
    (tmp_path / "service" / "pkg" / "a.py").write_text("x = 2\n")
    assert context_hash("service/Dockerfile", tmp_path) != first


def test_gcloudignore_uploads_only_the_build_inputs() -> None:
    patterns = (ROOT / "infra" / "build.gcloudignore").read_text().splitlines()
    assert "/*" in patterns
    assert {"!/pyproject.toml", "!/README.md", "!/service/"} <= set(patterns)
    assert os.access(SCRIPT, os.X_OK)


GCLOUD_LIB = Path("/usr/lib/google-cloud-sdk/lib")


@pytest.mark.skipif(not GCLOUD_LIB.is_dir(), reason="Google Cloud SDK not installed here")
def test_gcloud_uploads_exactly_the_build_context() -> None:
    """Ask gcloud's own .gcloudignore matcher which files `builds submit` would upload."""
    probe = (
        "from googlecloudsdk.command_lib.util import gcloudignore\n"
        "chooser = gcloudignore.FileChooser.FromFile('infra/build.gcloudignore')\n"
        "print('\\n'.join(chooser.GetIncludedFiles('.', include_dirs=False)))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{GCLOUD_LIB}:{GCLOUD_LIB / 'third_party'}"}
    result = subprocess.run(
        ["python3", "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    uploaded = set(result.stdout.split())
    assert {"pyproject.toml", "README.md", "service/gateway.Dockerfile"} <= uploaded
    assert {path.split("/")[0] for path in uploaded} == {"pyproject.toml", "README.md", "service"}
    assert not any("__pycache__" in p or p.endswith(".pyc") for p in uploaded)
    # everything the context hash covers is uploaded
    hashed = {str(p.relative_to(ROOT)) for p in context_files(ROOT)}
    assert hashed <= uploaded


@pytest.mark.skipif(not GCLOUD_LIB.is_dir(), reason="Google Cloud SDK not installed here")
def test_cloudbuild_yaml_loads_with_gclouds_parser() -> None:
    """gcloud validates the build config against the Cloud Build API schema on submit."""
    probe = (
        "from googlecloudsdk.api_lib.cloudbuild import cloudbuild_util, config\n"
        "m = cloudbuild_util.GetMessagesModule()\n"
        "b = config.LoadCloudbuildConfigFromPath('infra/cloudbuild.yaml', m,\n"
        "    params={'_IMAGE': 'r-docker.pkg.dev/p/r/i:t', '_DOCKERFILE': 'service/Dockerfile'})\n"
        "print(b.options.logging, b.images[0], b.steps[0].name)\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{GCLOUD_LIB}:{GCLOUD_LIB / 'third_party'}"}
    result = subprocess.run(
        ["python3", "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [
        "CLOUD_LOGGING_ONLY",  # required with a user-specified build service account
        "${_IMAGE}",
        "gcr.io/cloud-builders/docker",
    ]
