"""`text2img download --model sdxl-lightning`: fetch, verify and report the pinned files.

Everything goes through huggingface_hub (`hf_hub_download`, `get_hf_file_metadata`), at
commit-hash revisions, into huggingface_hub's cache layout under our shared cache
directory (files.py). Resuming: within a run, a cut connection is resumed from the byte it
stopped at (huggingface_hub retries with an HTTP Range request); across runs, every
finished file is kept and only unfinished ones start again (huggingface_hub 2.x writes a
per-process temporary file and removes it on failure). Verification: each file's content
against its Hub etag (sha256 for weights, git blob id for small files), see verify.py.
Offline ($HF_HUB_OFFLINE=1, or no network with a complete cache): nothing is fetched.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from text2img.engines.fetch.disk import check_free_space
from text2img.engines.sdxl import files, verify
from text2img.engines.sdxl.files import HubFile
from text2img.engines.sdxl.spec import LICENCE, enabled_steps
from text2img.errors import UserError

MODEL = "sdxl-lightning"
RUN = f"text2img download --model {MODEL}"
SPACE_MARGIN = 256 * 1000**2  # keep this much free beyond the download itself


class _Quiet(tqdm):
    """huggingface_hub's progress bars, switched off (`--quiet`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def _say(message: str, enabled: bool) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)


def _wanted() -> tuple[HubFile, ...]:
    return files.wanted(enabled_steps())


def status(cache_dir: Path, *, deep: bool = True) -> list[verify.FileStatus]:
    """One line per file this deployment needs: ok, missing, damaged or unverified."""
    hub = files.hub_cache(cache_dir)
    return [
        verify.check(hub, files.local_path(cache_dir, f), f.label, deep=deep) for f in _wanted()
    ]


def require(cache_dir: Path | None, wanted: Sequence[HubFile] | None = None) -> None:
    """UserError saying what to run unless every wanted file is present and has a Hub hash
    to be checked against. Hashing itself happens while loading (`verify.Hashing`).

    Used by the engine's loader: the service never downloads on its own."""
    hub = files.hub_cache(cache_dir)
    bad = []
    for f in wanted if wanted is not None else _wanted():
        pointer = files.local_path(cache_dir, f)
        if not pointer.exists():
            bad.append(f"{f.label} is missing")
        elif verify.expected_etag(hub, pointer, f.label) is None:
            bad.append(f"{f.label} is a plain file with no recorded Hub hash")
    if bad:
        listing = "; ".join(bad[:3])
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise UserError(
            f"the {MODEL} weights in {hub} are incomplete: {listing}{more}; "
            f"run `{RUN}` (with network access) first"
        )


def ensure(cache_dir: Path, *, progress: bool = True, force: bool = False) -> None:
    """Download what is missing, damaged or unverifiable, verify everything; quick when all
    is in place (a file whose size and mtime match its last verification is not re-hashed
    here: loading hashes every byte it loads anyway)."""
    hub = files.hub_cache(cache_dir)
    # named even with --quiet: using the weights means accepting these licences
    _say(f"{MODEL}: weights licensed under {LICENCE}; using them means accepting them", True)
    wanted = _wanted()
    todo: list[HubFile] = []
    for hub_file in wanted:
        pointer = files.local_path(cache_dir, hub_file)
        state = verify.check(hub, pointer, hub_file.label, deep=False)
        if (force or not state.ok) and (pointer.exists() or pointer.is_symlink()):
            if state.state in ("damaged", "unverified"):
                _say(
                    f"{MODEL}: {hub_file.label} is {state.state} ({state.detail}); "
                    "fetching it again",
                    True,
                )
            verify.remove(pointer)
        if force or not state.ok:
            todo.append(hub_file)
    if not todo:
        _say(f"{MODEL}: all {len(wanted)} files present and verified in {hub}", progress)
        return
    if files.offline():
        names = ", ".join(f.label for f in todo[:3]) + (" …" if len(todo) > 3 else "")
        raise UserError(
            f"HF_HUB_OFFLINE is set and {len(todo)} {MODEL} file(s) are not in {hub} "
            f"({names}); run `{RUN}` on a machine with network access (or unset HF_HUB_OFFLINE)"
        )
    hub.mkdir(parents=True, exist_ok=True)
    sizes = {f: _remote_size(f) for f in todo}
    check_free_space(hub, sum(sizes.values()), f"the {MODEL} weights", margin=SPACE_MARGIN)
    tqdm_class = None if progress else _Quiet
    for hub_file in todo:
        _say(f"{MODEL}: {hub_file.label} ({sizes[hub_file] / 1e6:,.1f} MB)", progress)
        _download(cache_dir, hub_file, tqdm_class)
        pointer = files.local_path(cache_dir, hub_file)
        state = verify.check(hub, pointer, hub_file.label, deep=True)
        if not state.ok:
            verify.remove(pointer)
            raise UserError(
                f"{hub_file.label} arrived damaged ({state.detail}) and was removed; "
                f"run `{RUN}` again (if it keeps failing, the mirror in HF_ENDPOINT serves "
                "a different file)"
            )
    _say(f"{MODEL}: {len(todo)} file(s) downloaded and verified into {hub}", progress)


def _hub_errors() -> tuple[type[BaseException], ...]:
    import httpx2

    return (OSError, ValueError, httpx2.HTTPError)


def _explain(hub_file: HubFile, exc: BaseException) -> UserError:
    """A UserError naming the file, the endpoint and what to do, for any Hub failure."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = files.endpoint()
    cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, OfflineModeIsEnabled):
        return UserError(
            f"huggingface_hub is in offline mode (HF_HUB_OFFLINE was set when it was imported) "
            f"and {hub_file.label} is not cached; run `{RUN}` without HF_HUB_OFFLINE"
        )
    if isinstance(exc, RevisionNotFoundError | RepositoryNotFoundError):
        return UserError(
            f"{where} does not have {hub_file.repo} at revision {hub_file.revision[:12]} "
            f"({cause}); if HF_ENDPOINT points to a mirror, mirror that exact revision"
        )
    if isinstance(exc, HfHubHTTPError):
        return UserError(
            f"the Hub at {where} refused {hub_file.label} ({cause}); run `{RUN}` again later"
        )
    if isinstance(exc, LocalEntryNotFoundError) or not isinstance(exc, OSError | ValueError):
        return UserError(
            f"cannot reach the Hugging Face Hub at {where} to fetch {hub_file.label} "
            f"({cause}); check the network, or set HF_ENDPOINT to a Hub mirror, then run "
            f"`{RUN}` again (files already fetched are kept)"
        )
    if "Consistency check failed" in cause:
        return UserError(
            f"{hub_file.label} arrived with the wrong size ({cause}); run `{RUN}` again"
        )
    if isinstance(exc, OSError) and exc.errno == 28:  # ENOSPC
        return UserError(
            f"disk full while fetching {hub_file.label} into the model cache: "
            f"free some space or point TEXT2IMG_MODEL_CACHE elsewhere, then run `{RUN}`"
        )
    return UserError(f"fetching {hub_file.label} from {where} failed ({cause}); run `{RUN}` again")


def _remote_size(hub_file: HubFile) -> int:
    """The file's size from the Hub's HEAD metadata (for the disk-space check)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(
        hub_file.repo, hub_file.path, revision=hub_file.revision, endpoint=files.endpoint()
    )
    try:
        meta = get_hf_file_metadata(url, endpoint=files.endpoint())
    except _hub_errors() as exc:
        raise _explain(hub_file, exc) from None
    return meta.size or 0


def _download(cache_dir: Path, hub_file: HubFile, tqdm_class: type[tqdm] | None) -> None:
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(
            hub_file.repo,
            hub_file.path,
            revision=hub_file.revision,
            cache_dir=files.hub_cache(cache_dir),
            endpoint=files.endpoint(),
            tqdm_class=tqdm_class,
        )
    except _hub_errors() as exc:
        raise _explain(hub_file, exc) from None
