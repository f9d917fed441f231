"""The media URL policy against a real local HTTP server: what is fetched, what is refused."""

import asyncio
import gzip
import ipaddress
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from common.media_fetch import ByteBudget, MediaFetchPolicy, MediaURLError, fetch_media

BODY = b"\x89PNG fake image bytes" * 100


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/slow":
            time.sleep(2)
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", self.path.split("to=", 1)[1])
            self.end_headers()
            return
        if self.path == "/gzip-bomb":  # 10 MB of zeros in about 10 KB, sent as asked or not
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Encoding", "gzip")
            self.end_headers()
            self.wfile.write(gzip.compress(bytes(10 * 1024 * 1024)))
            return
        if self.path == "/accept-encoding":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(self.headers.get("Accept-Encoding", "").encode())
            return
        self.send_response(200 if self.path != "/missing" else 404)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server_port():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


LOCAL = MediaFetchPolicy(allowed_domains=("localhost",), allowed_networks=("127.0.0.0/8",))


def fetch(url, policy=LOCAL):
    return asyncio.run(fetch_media(url, policy))


def refused(url, policy=LOCAL) -> MediaURLError:
    with pytest.raises(MediaURLError) as info:
        fetch(url, policy)
    return info.value


def test_data_urls_always_work():
    assert fetch("data:image/png;base64,aGVsbG8=", MediaFetchPolicy()) == (b"hello", "image/png")
    assert refused("data:image/png;base64,not base64!").code == "invalid_media_url"


def test_allowed_domain_on_an_opened_network_is_fetched(server_port):
    assert fetch(f"http://localhost:{server_port}/cat.png") == (BODY, "image/png")


@pytest.mark.parametrize(
    "url,code",
    [
        ("file:///etc/passwd", "invalid_media_url"),
        ("/etc/passwd", "invalid_media_url"),
        ("ftp://localhost/x", "invalid_media_url"),
        ("http://example.org/x.png", "media_domain_not_allowed"),
        ("http://127.0.0.1/x.png", "media_domain_not_allowed"),  # an address is not a listed domain
    ],
)
def test_other_schemes_paths_and_unlisted_hosts_are_refused(url, code):
    assert refused(url).code == code


def test_private_addresses_are_refused_unless_the_operator_opens_them(server_port):
    closed = MediaFetchPolicy(allowed_domains=("localhost",))
    assert (
        refused(f"http://localhost:{server_port}/cat.png", closed).code
        == "media_address_not_allowed"
    )


@pytest.mark.parametrize(
    "host",
    [
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "127.1",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[0:0:0:0:0:ffff:7f00:1]",
        "169.254.169.254",
        "[fd00::1]",
        "localhost.",
    ],
)
def test_other_spellings_of_internal_addresses_are_refused(host):
    # The operator allows a domain; none of these spellings is it, and none may reach an internal
    # address.
    policy = MediaFetchPolicy(allowed_domains=("example.com",))
    assert refused(f"http://{host}/latest/meta-data", policy).code == "media_domain_not_allowed"


@pytest.mark.parametrize(
    "url",
    ["http://localhost:99999/x.png", "http://localhost:port/x.png", "http://localhost:1/x.png"],
)  # out of range, not a number, nothing listening
def test_unreachable_or_malformed_urls_of_allowed_domains_are_4xx(url):
    error = refused(url)
    assert error.status_code == 400 and error.code == "media_fetch_failed", error.message


def test_redirects_are_checked_hop_by_hop(server_port):
    error = refused(f"http://localhost:{server_port}/redirect?to=http://example.org/x.png")
    assert error.code == "media_domain_not_allowed"
    assert fetch(f"http://localhost:{server_port}/redirect?to=/ok.png")[0] == BODY


def test_size_and_time_limits(server_port):
    small = MediaFetchPolicy(("localhost",), ("127.0.0.0/8",), max_bytes=1024)
    assert refused(f"http://localhost:{server_port}/cat.png", small).status_code == 413
    quick = MediaFetchPolicy(("localhost",), ("127.0.0.0/8",), timeout_s=0.5)
    assert refused(f"http://localhost:{server_port}/slow", quick).code == "media_download_timeout"
    assert refused(f"http://localhost:{server_port}/missing").code == "media_fetch_failed"


def test_subdomains_of_allowed_domains_match_but_lookalikes_do_not():
    policy = MediaFetchPolicy(allowed_domains=("example.com", "*.cdn.example.org"))
    assert policy.domain_allowed("img.example.com") and policy.domain_allowed("EXAMPLE.com.")
    assert policy.domain_allowed("a.cdn.example.org")
    assert not policy.domain_allowed("badexample.com") and not policy.domain_allowed(
        "example.com.evil.net"
    )


def test_a_compressed_answer_is_refused_before_it_is_inflated(server_port):
    assert fetch(f"http://localhost:{server_port}/accept-encoding")[0] == b"identity"
    # 10 KB on the wire, 10 MB inflated: under a 1 MB cap it must never be inflated
    capped = MediaFetchPolicy(("localhost",), ("127.0.0.0/8",), max_bytes=1024 * 1024)
    error = refused(f"http://localhost:{server_port}/gzip-bomb", capped)
    assert error.code == "media_fetch_failed" and "Content-Encoding 'gzip'" in error.message


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b:1::a00:1",  # local-use NAT64 of 10.0.0.1
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
        "::ffff:10.0.0.1",
        "::127.0.0.1",
    ],
)
def test_addresses_that_translate_to_ipv4_are_refused(address):
    assert not MediaFetchPolicy().address_allowed(ipaddress.ip_address(address))


def test_public_addresses_are_allowed_and_an_opened_network_wins():
    policy = MediaFetchPolicy(allowed_networks=("64:ff9b::/96",))
    assert MediaFetchPolicy().address_allowed(ipaddress.ip_address("2606:4700::1111"))
    assert MediaFetchPolicy().address_allowed(ipaddress.ip_address("1.1.1.1"))
    assert policy.address_allowed(ipaddress.ip_address("64:ff9b::101:101"))


def test_the_downloads_of_one_request_share_its_byte_budget(server_port):
    budget = ByteBudget(len(BODY) * 3 // 2)
    url = f"http://localhost:{server_port}/cat.png"
    assert asyncio.run(fetch_media(url, LOCAL, budget))[0] == BODY
    with pytest.raises(MediaURLError) as info:
        asyncio.run(fetch_media(url, LOCAL, budget))  # the second does not fit what is left
    assert info.value.status_code == 413 and "in all" in info.value.message
