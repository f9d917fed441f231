"""The web console at ``/console``: a page and two static files, served by the router itself.

It is a client of the platform's own API (``/v1/models``, ``/ready``, ``/v1/...``, ``/v2/...``)
called from the browser with the user's key, so it needs no privilege the API does not give and
holds no secret: the page is public (it shows a login when the API answers 401), the key stays
in the tab's ``sessionStorage``. Everything it loads comes from these files (no CDN), under a
Content Security Policy that allows only this origin's scripts and styles, and no inline script.
``install_page`` serves the API docs' page (``serve/router/api_docs``) the same way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import Response

CONSOLE_PATH = "/console"
HTML, JS, CSS = (
    "text/html; charset=utf-8",
    "text/javascript; charset=utf-8",
    "text/css; charset=utf-8",
)
# Images, recordings and generated speech become blob:/data: URLs in the page; nothing else is
# loaded.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' blob: data:; media-src 'self' blob: data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)

Asset = tuple[Callable[[], bytes], str]  # how to read a file, and its content type


def page_headers(content_security_policy: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


def package_file(package: str, name: str) -> Callable[[], bytes]:
    """Reads the file of ``package`` once, when first asked for."""
    return functools.cache(lambda: (files(package) / name).read_bytes())


def install_page(
    app: FastAPI, path: str, page: Asset, assets: Mapping[str, Asset], headers: Mapping[str, str]
) -> None:
    """``GET path`` (the page) and ``GET path/<name>`` (one of its ``assets``; any other name a
    404), with ``headers``. The policy must let them through without a key: the page asks for it."""

    def serve(asset: Asset) -> Response:
        read, media_type = asset
        return Response(read(), media_type=media_type, headers=dict(headers))

    @app.get(path, include_in_schema=False)
    async def page_route() -> Response:
        return serve(page)

    @app.get(path + "/{name}", include_in_schema=False)
    async def asset_route(name: str) -> Response:
        if name not in assets:
            return Response("not found", status_code=404, media_type="text/plain", headers=headers)
        return serve(assets[name])


def install_console(app: FastAPI) -> None:
    """``GET /console`` (the page) and ``GET /console/<file>`` (its script and style)."""
    install_page(
        app,
        CONSOLE_PATH,
        (package_file(__package__, "console.html"), HTML),
        {
            "console.js": (package_file(__package__, "console.js"), JS),
            "usage.js": (package_file(__package__, "usage.js"), JS),
            # Chart.js 4.5.1 (MIT, vendor/chart.js-LICENSE.md), served from here: no CDN
            "chart.umd.min.js": (package_file(__package__, "vendor/chart.umd.min.js"), JS),
            "console.css": (package_file(__package__, "console.css"), CSS),
        },
        page_headers(CONTENT_SECURITY_POLICY),
    )
