"""GET /ui: the attention editor page (plain HTML/JS/CSS, every asset served from here)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# The page's assets by URL name; nothing else under static/ is served.
ASSETS = {
    "editor.js": "text/javascript",
    "editor.css": "text/css",
}

router = APIRouter(tags=["ui"])


@router.get("/ui", include_in_schema=False)
async def get_editor_page() -> FileResponse:
    """The attention editor (seed 002's first embodiment, for people)."""
    return FileResponse(STATIC_DIR / "editor.html", media_type="text/html; charset=utf-8")


@router.get("/ui/static/{asset}", include_in_schema=False)
async def get_editor_asset(asset: str) -> FileResponse:
    """One of the page's own scripts or styles (ASSETS); 404 for anything else."""
    media_type = ASSETS.get(asset)
    if media_type is None:
        raise HTTPException(status_code=404, detail=f"no asset {asset!r}")
    return FileResponse(STATIC_DIR / asset, media_type=f"{media_type}; charset=utf-8")
