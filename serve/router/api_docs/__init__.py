"""Swagger UI at ``/docs``: the router's OpenAPI description (``/openapi.json``) to read and try.

FastAPI's own page loads Swagger UI from a CDN, which an offline platform cannot reach, and starts
it with an inline script, which the Content Security Policy here forbids. So the router serves
Swagger UI's files itself, from the ``swagger-ui-py`` package (Swagger UI 5, which reads the
OpenAPI 3.1 that FastAPI writes; its Apache-2.0 license at ``/docs/swagger-ui-LICENSE.txt``),
beside a page and a start script of ours.

The page is public, as the console's is: a browser that opens it cannot send a bearer header. It
holds nothing of the API. Its script fetches ``/openapi.json`` with the key (the console's, kept
in this tab, or one the page asks for when that answers 401), so the description stays behind the
same rule as ``/openapi.json`` itself, each key seeing its own models, and "Try it out" sends the
same key.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI

from serve.console import CSS, HTML, JS, install_page, package_file, page_headers

DOCS_PATH = "/docs"
SWAGGER_PACKAGE = "swagger_ui"  # the PyPI package swagger-ui-py, whose static/ holds Swagger UI
# Swagger UI's stylesheet draws its icons from data: URLs; "Try it out" shows images and audio
# answers as blob: URLs. It calls this origin only (its validator badge is off).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' blob: data:; media-src 'self' blob:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)


def swagger_file(name: str) -> Callable[[], bytes]:
    """A file of Swagger UI's distribution, read when first asked for (found without importing
    the package, whose module code serves other frameworks)."""

    def read() -> bytes:
        spec = importlib.util.find_spec(SWAGGER_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("/docs needs the package swagger-ui-py (requirements.txt)")
        return (Path(spec.submodule_search_locations[0]) / "static" / name).read_bytes()

    return functools.cache(read)


def install_api_docs(app: FastAPI) -> None:
    """``GET /docs`` and its files."""
    install_page(
        app,
        DOCS_PATH,
        (package_file(__package__, "docs.html"), HTML),
        {
            "docs.js": (package_file(__package__, "docs.js"), JS),
            "docs.css": (package_file(__package__, "docs.css"), CSS),
            "swagger-ui-bundle.js": (swagger_file("swagger-ui-bundle.js"), JS),
            "swagger-ui.css": (swagger_file("swagger-ui.css"), CSS),
            "swagger-ui-LICENSE.txt": (swagger_file("LICENSE"), "text/plain; charset=utf-8"),
        },
        page_headers(CONTENT_SECURITY_POLICY),
    )
