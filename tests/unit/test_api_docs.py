"""``/docs``: Swagger UI served by the router from its own files, a public page under a strict
policy, while the description it shows stays behind the key."""

from fastapi.testclient import TestClient

from configs.api_keys import APIKey
from serve.router.app import create_router_app
from serve.router.routing import RouterSettings

KEY = "docs-test-key"
ASSETS = {
    "docs.js": "text/javascript",
    "docs.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "swagger-ui-LICENSE.txt": "text/plain",
}


def _client() -> TestClient:
    return TestClient(create_router_app(RouterSettings({}, api_keys=(APIKey(KEY, "one"),)), None))


def test_the_page_and_its_files_need_no_key_and_load_nothing_from_elsewhere():
    c = _client()
    page = c.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "unsafe-inline" not in policy and "<script>" not in page.text  # no inline script
    assert "http" not in page.text  # every file it names is one of these
    for name, content_type in ASSETS.items():
        asset = c.get(f"/docs/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(content_type)
        assert asset.headers["content-security-policy"] == policy
    assert b"SwaggerUIBundle" in c.get("/docs/swagger-ui-bundle.js").content
    assert "Apache License" in c.get("/docs/swagger-ui-LICENSE.txt").text
    assert KEY not in page.text + c.get("/docs/docs.js").text


def test_only_its_own_files_are_served():
    c = _client()
    for other in ("/docs/docs.html", "/docs/..%2Fapp.py", "/docs/index.html", "/docs/LICENSE"):
        assert c.get(other).status_code == 404, other


def test_the_description_it_shows_stays_behind_the_key():
    c = _client()
    assert c.get("/openapi.json").status_code == 401
    assert c.get("/openapi.json", headers={"Authorization": "Bearer wrong"}).status_code == 401
    described = c.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert "/v1/chat/completions" in described["paths"]
    assert not any(path.startswith("/docs") for path in described["paths"])  # not an API path
