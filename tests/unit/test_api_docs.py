"""``/docs``: Swagger UI served by the router from its own files, a public page under a strict
policy, while the description it shows stays behind the key."""

import dataclasses

from fastapi.testclient import TestClient

from configs.api_keys import APIKey
from serve.policy.request_policy import guarded
from serve.router.app import create_router_app, router_policy
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


def test_the_description_asks_for_the_key_once_keys_arrive_on_a_running_router():
    """Keys sent as the router's user_config after it was built: the description names the
    bearer scheme then, so Swagger's "Try it out" sends the key."""
    policy = router_policy(RouterSettings({}), None)
    c = TestClient(guarded(policy))
    assert "securitySchemes" not in c.get("/openapi.json").json()["components"]
    policy.settings = dataclasses.replace(policy.settings, api_keys=(APIKey(KEY, "one"),))
    described = c.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert described["components"]["securitySchemes"] == {
        "bearer": {"type": "http", "scheme": "bearer"}
    }
    assert described["security"] == [{"bearer": []}]
