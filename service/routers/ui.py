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

# The page loads only its own script and styles, talks only to this origin, shows the
# user's photo (blob:) and the model's maps (data:), and may not be framed by another site
# (a framed page could be steered into saving a teacher record).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(tags=["ui"])


@router.get("/ui", include_in_schema=False)
async def get_editor_page() -> FileResponse:
    """The attention editor (seed 002's first embodiment, for people)."""
    return FileResponse(
        STATIC_DIR / "editor.html",
        media_type="text/html; charset=utf-8",
        headers=SECURITY_HEADERS,
    )


@router.get("/ui/static/{asset}", include_in_schema=False)
async def get_editor_asset(asset: str) -> FileResponse:
    """One of the page's own scripts or styles (ASSETS); 404 for anything else."""
    media_type = ASSETS.get(asset)
    if media_type is None:
        raise HTTPException(status_code=404, detail=f"no asset {asset!r}")
    return FileResponse(
        STATIC_DIR / asset, media_type=f"{media_type}; charset=utf-8", headers=SECURITY_HEADERS
    )
