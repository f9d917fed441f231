"""Turn a media reference from a request into bytes, under the operator's policy.

``data:`` URLs are always accepted. ``http(s)`` URLs only when the host is one of the
operator's ``allowed_domains`` (or a subdomain of one) and every address it resolves to is
public; the connection then goes to the checked address (no second DNS lookup that could
answer differently), redirects are re-checked hop by hop, and the download is capped in
bytes (as sent: no compressed answers) and seconds. Anything else (``file:``, a bare path,
other schemes) is refused.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

import httpx

from common.input_errors import InputError

MAX_REDIRECTS = 3
DOWNLOADED = ("http:", "https:")  # the references fetch_media downloads (data: it decodes)
# IPv6 ranges that carry or translate to an IPv4 address (which may be an internal one): no host
# of their own. Python 3.11's ``is_global`` counts NAT64 and 6to4 as global.
TRANSLATED_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in (
        "64:ff9b::/96",  # NAT64 (RFC 6052)
        "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215)
        "2002::/16",  # 6to4 (RFC 3056)
        "2001::/32",  # Teredo (RFC 4380)
        "::ffff:0:0/96",  # IPv4-mapped
        "::/96",  # IPv4-compatible
    )
)


class MediaURLError(InputError):
    """A media reference the policy refuses or that cannot be fetched; 400 or 413."""

    def __init__(self, message: str, code: str = "invalid_media_url", status_code: int = 400):
        super().__init__(message, code, status_code)


@dataclass(frozen=True)
class MediaFetchPolicy:
    allowed_domains: tuple[str, ...] = ()
    # non-public networks the operator opens on purpose (an internal media store); none by default
    allowed_networks: tuple[str, ...] = ()
    max_bytes: int = 20 * 1024 * 1024  # one download
    timeout_s: float = 10.0
    max_urls_per_request: int = 16  # counted before anything is fetched
    max_request_bytes: int = 64 * 1024 * 1024  # the downloads of one request, in all
    max_parts_per_request: int = 32  # chat media parts, data: URLs included
    max_image_pixels: int = 4096 * 4096  # a chat image's width x height, read from its header
    max_frame_pixels: int = 4096 * 2160  # a chat video's frame (a 4K frame), the same way
    max_video_frames: int = 3600  # a chat video's frames checked (2 minutes at 30 fps)
    max_video_check_s: float = 10.0  # that check's time (a thread: the timeout cannot stop it)

    def budget(self, references: Iterable[object]) -> ByteBudget:
        """What the downloads of one request's media ``references`` may take in all (data: URLs
        and base64 download nothing); a 400, before any fetch, when they name too many URLs."""
        urls = sum(isinstance(r, str) and r.lower().startswith(DOWNLOADED) for r in references)
        if urls > self.max_urls_per_request:
            raise MediaURLError(
                f"the request names {urls} media URLs; the limit is {self.max_urls_per_request}",
                "too_many_media_urls",
            )
        return ByteBudget(self.max_request_bytes, urls)

    def address_allowed(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if any(ip in ipaddress.ip_network(net, strict=False) for net in self.allowed_networks):
            return True
        if any(ip in network for network in TRANSLATED_NETWORKS):
            return False
        return ip.is_global and not ip.is_multicast

    def domain_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return any(
            host == d or host.endswith("." + d)
            for d in (d.lower().lstrip("*.") for d in self.allowed_domains)
        )


class ByteBudget:
    """The bytes that the downloads of one request may still take, shared by all of them."""

    def __init__(self, limit: int, urls: int = 0):
        self.limit, self.left = limit, limit
        self.urls = urls  # how many downloads share it
        self.hold: Callable[[int], None] | None = None  # also takes them from a memory budget

    def take(self, size: int) -> None:
        if self.hold is not None:
            self.hold(size)
        self.left -= size
        if self.left < 0:
            raise MediaURLError(
                f"the request's media downloads exceed {self.limit} bytes in all",
                "media_too_large",
                413,
            )


async def fetch_media(
    url: str, policy: MediaFetchPolicy, budget: ByteBudget | None = None
) -> tuple[bytes, str | None]:
    """The bytes ``url`` names and their media type, when the policy allows it; a download counts
    against ``budget``, its request's, as it arrives."""
    if url.startswith("data:"):
        return decode_data_url(url, policy.max_bytes)
    try:
        async with asyncio.timeout(policy.timeout_s):
            return await _download(url, policy, budget or ByteBudget(policy.max_bytes))
    except TimeoutError:
        raise MediaURLError(
            f"downloading {url!r} took longer than {policy.timeout_s:g} s", "media_download_timeout"
        ) from None
    except MediaURLError:
        raise
    except (httpx.HTTPError, ValueError, UnicodeError, OSError) as err:
        # A malformed port or host, a refused connection, a TLS failure: the URL's fault.
        raise MediaURLError(
            f"fetching {url!r} failed: {err or type(err).__name__}", "media_fetch_failed"
        ) from None


def decode_data_url(url: str, max_bytes: int) -> tuple[bytes, str | None]:
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise MediaURLError("malformed data: URL (no comma)")
    media_type = header.split(";")[0] or None
    if len(payload) * 3 // 4 > max_bytes:
        raise MediaURLError(
            f"the data: URL holds more than {max_bytes} bytes", "media_too_large", 413
        )
    try:
        data = (
            base64.b64decode(payload, validate=True)
            if header.endswith(";base64")
            else unquote_to_bytes(payload)
        )
    except binascii.Error:
        raise MediaURLError("the data: URL is not valid base64") from None
    return data, media_type


async def _download(
    url: str, policy: MediaFetchPolicy, budget: ByteBudget
) -> tuple[bytes, str | None]:
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            address = await _checked_address(parts, policy)
            pinned = parts._replace(netloc=_netloc(address, parts.port)).geturl()
            # the bytes as sent: a compressed answer would be inflated before the size check
            headers = {"Host": parts.netloc.rpartition("@")[2], "Accept-Encoding": "identity"}
            async with client.stream(
                "GET", pinned, headers=headers, extensions={"sni_hostname": parts.hostname}
            ) as response:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise MediaURLError(
                        f"fetching {url!r} answered HTTP {response.status_code}",
                        "media_fetch_failed",
                    )
                return await _read_capped(response, policy.max_bytes, budget), response.headers.get(
                    "content-type"
                )
    raise MediaURLError(f"{url!r} redirected more than {MAX_REDIRECTS} times", "media_fetch_failed")


async def _checked_address(parts, policy: MediaFetchPolicy) -> str:
    if parts.scheme not in ("http", "https"):
        raise MediaURLError(
            "media URLs must be data: or http(s) URLs; local files and other schemes are refused"
        )
    host = parts.hostname or ""
    if not policy.domain_allowed(host):
        raise MediaURLError(
            f"host {host!r} is not in the media allowed_domains of this server",
            "media_domain_not_allowed",
        )
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, parts.port, type=socket.SOCK_STREAM
        )
    except socket.gaierror:
        raise MediaURLError(f"host {host!r} does not resolve", "media_fetch_failed") from None
    addresses = {str(info[4][0]) for info in infos}  # IP sockaddrs start with the host string
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not policy.address_allowed(ip):
            raise MediaURLError(
                f"host {host!r} resolves to a non-public address ({ip})",
                "media_address_not_allowed",
            )
    return sorted(addresses)[0]


def _netloc(address: str, port: int | None) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{port}" if port else host


async def _read_capped(response: httpx.Response, max_bytes: int, budget: ByteBudget) -> bytes:
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise MediaURLError(
            f"the media was sent with Content-Encoding {encoding!r}, though asked for identity; "
            "encoded media is refused",
            "media_fetch_failed",
        )
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise MediaURLError(
            f"the media is {declared} bytes; the limit is {max_bytes}", "media_too_large", 413
        )
    body = bytearray()
    async for chunk in response.aiter_raw():
        budget.take(len(chunk))
        body += chunk
        if len(body) > max_bytes:
            raise MediaURLError(
                f"the media exceeds the limit of {max_bytes} bytes", "media_too_large", 413
            )
    return bytes(body)
