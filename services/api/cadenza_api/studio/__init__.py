"""The studio: a browser front-end served at `/studio`, static files and nothing else.

It is plain HTML, CSS and ES modules shipped inside this package (no build step, nothing from a
CDN), and it talks to the public `/v1` API with the key the user types in, exactly as any
client would: it has no route, permission or data of its own. That keeps it the proof that the
API is enough, and keeps it out of the OpenAPI document (a mount is not an operation).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).parent / "static"

# Only this origin's scripts, styles and API; media and pictures may also be the blob: URLs the
# studio makes from authenticated downloads (an <audio> element cannot send a Bearer header).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)


class StudioFiles(StaticFiles):
    """Static files with a content security policy, and revalidated on every load.

    `no-cache` (revalidate, usually a 304) rather than a max-age: the files have no hashed
    names, so an upgraded server must never meet last version's modules in a browser cache.
    """

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response


def install(app: FastAPI) -> None:
    """Mount the studio at `/studio/` (`/studio` redirects there)."""
    app.mount("/studio", StudioFiles(directory=STATIC_DIR, html=True), name="studio")
