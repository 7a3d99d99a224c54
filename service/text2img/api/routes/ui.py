"""The web UI: static files from `text2img/api/static`, no build step, no CDN.

Every file of the page (`/`, `/favicon.ico`, `/static/*`, `/static/index.html` too) carries
the same security headers (`text2img.front_door.UI_HEADERS`), as the gateway's copies do.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

from text2img.front_door import CSP, UI_HEADERS

__all__ = ["CSP", "UI_HEADERS", "PageFiles", "router", "static_dir"]

router = APIRouter(include_in_schema=False)


def static_dir() -> Path:
    """The UI's files on disk (the package is installed as files, not zipped)."""
    return Path(str(resources.files("text2img.api") / "static"))


class PageFiles(StaticFiles):
    """StaticFiles whose answers carry the page's security headers."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(UI_HEADERS)
        return response


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(static_dir() / "index.html", headers=UI_HEADERS)


@router.get("/favicon.ico")
async def favicon() -> FileResponse:
    return FileResponse(static_dir() / "favicon.ico", media_type="image/x-icon", headers=UI_HEADERS)
