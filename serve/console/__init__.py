"""The web console at ``/console``: a page and two static files, served by the router itself.

It is a client of the platform's own API (``/v1/models``, ``/ready``, ``/v1/...``, ``/v2/...``)
called from the browser with the user's key, so it needs no privilege the API does not give and
holds no secret: the page is public (it shows a login when the API answers 401), the key stays
in the tab's ``sessionStorage``. Everything it loads comes from these files (no CDN), under a
Content Security Policy that allows only this origin's scripts and styles, and no inline script.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import Response

CONSOLE_PATH = "/console"
CONTENT_TYPES = {
    "console.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
# Images, recordings and generated speech become blob:/data: URLs in the page; nothing else is
# loaded.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' blob: data:; media-src 'self' blob: data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def install_console(app: FastAPI) -> None:
    """``GET /console`` (the page) and ``GET /console/<file>`` (its script and style)."""
    assets = {name: (files(__package__) / name).read_bytes() for name in CONTENT_TYPES}

    def serve(name: str) -> Response:
        return Response(assets[name], media_type=CONTENT_TYPES[name], headers=HEADERS)

    @app.get(CONSOLE_PATH, include_in_schema=False)
    async def console_page() -> Response:
        return serve("console.html")

    @app.get(CONSOLE_PATH + "/{name}", include_in_schema=False)
    async def console_asset(name: str) -> Response:
        if name not in CONTENT_TYPES or name == "console.html":
            return Response("not found", status_code=404, media_type="text/plain", headers=HEADERS)
        return serve(name)
