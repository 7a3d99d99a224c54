"""The web UI: static files from `text2img/api/static`, no build step, no CDN."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

router = APIRouter(include_in_schema=False)

# Everything the page needs comes from this origin; images arrive as data:/blob: URLs.
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
UI_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def static_dir() -> Path:
    """The UI's files on disk (the package is installed as files, not zipped)."""
    return Path(str(resources.files("text2img.api") / "static"))


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(static_dir() / "index.html", headers=UI_HEADERS)


@router.get("/favicon.ico")
async def favicon() -> FileResponse:
    return FileResponse(static_dir() / "favicon.ico", media_type="image/x-icon")
