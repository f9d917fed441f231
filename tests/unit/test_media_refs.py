"""Media URLs in chat messages, fetched before the engine sees them: how many a request may name,
and what happens to the other downloads when one fails (the downloads themselves: a stand-in)."""

import asyncio

import pytest

from common.media_fetch import MediaFetchPolicy, MediaURLError
from common.upload_sizes import UPLOAD_COPIES_HELD
from serve.policy import media_refs
from serve.router.errors import APIError
from serve.router.uploads import UploadMemory
from tests.media_files import b64, growing_video_file, image_file, video_file


def _chat(*urls: str) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return {"messages": [{"role": "user", "content": parts}]}


@pytest.fixture
def downloads(monkeypatch) -> dict[str, list[str]]:
    """Downloads that never finish, except a URL with "bad" in it, which fails at once."""
    seen: dict[str, list[str]] = {"started": [], "cancelled": []}

    async def fetch(url, policy, budget):
        seen["started"].append(url)
        if "bad" in url:
            raise MediaURLError(f"{url} refused")
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen["cancelled"].append(url)
            raise
        return b"", None

    monkeypatch.setattr(media_refs, "fetch_media", fetch)
    return seen


def test_a_failed_download_cancels_the_others_before_the_request_is_answered(downloads):
    urls = ["http://img/1.png", "http://img/bad.png", "http://img/2.png"]
    with pytest.raises(APIError) as info:
        asyncio.run(media_refs.inline_chat_media(_chat(*urls), MediaFetchPolicy()))
    assert info.value.status_code == 400
    assert sorted(downloads["cancelled"]) == ["http://img/1.png", "http://img/2.png"]


def test_more_media_urls_than_allowed_are_refused_before_any_download(downloads):
    policy = MediaFetchPolicy(max_urls_per_request=2)
    urls = [f"http://img/{i}.png" for i in range(3)]
    with pytest.raises(APIError) as info:
        asyncio.run(media_refs.inline_chat_media(_chat(*urls), policy))
    assert info.value.status_code == 400 and info.value.code == "too_many_media_urls"
    assert downloads["started"] == []


def test_fetched_bytes_are_held_against_the_upload_memory_until_the_request_ends(monkeypatch):
    async def fetch(url, policy, budget):
        for _ in range(4):  # the bytes as they arrive
            budget.take(100)
        return b"x" * 400, "image/png"

    monkeypatch.setattr(media_refs, "fetch_media", fetch)
    memory = UploadMemory(total_bytes=2 * 400 * UPLOAD_COPIES_HELD)
    with memory.hold() as held:
        asyncio.run(
            media_refs.inline_chat_media(_chat("http://img/1.png"), MediaFetchPolicy(), held.add)
        )
        assert memory.held_bytes == 400 * UPLOAD_COPIES_HELD
        # a second request's three downloads do not fit beside it: 503, before they finish
        with memory.hold() as other, pytest.raises(APIError) as info:
            urls = [f"http://img/{i}.png" for i in range(3)]
            asyncio.run(media_refs.inline_chat_media(_chat(*urls), MediaFetchPolicy(), other.add))
        assert info.value.status_code == 503 and info.value.code == "server_busy"
    assert memory.held_bytes == 0


def _data_url(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{b64(data)}"


def test_data_parts_count_against_the_parts_cap_before_anything_is_decoded(downloads):
    policy = MediaFetchPolicy(max_parts_per_request=2)
    urls = [_data_url("image/png", image_file()) for _ in range(2)] + ["http://img/1.png"]
    with pytest.raises(APIError) as info:
        asyncio.run(media_refs.inline_chat_media(_chat(*urls), policy))
    assert (info.value.status_code, info.value.code) == (400, "too_many_media_parts")
    assert info.value.param == "messages" and downloads["started"] == []
    assert asyncio.run(media_refs.inline_chat_media(_chat(*urls[:2]), policy)) is True
    # parts vLLM decodes from the body itself count too
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    body = _chat(*urls[:2])
    body["messages"][0]["content"].append(audio)
    with pytest.raises(APIError) as info:
        asyncio.run(media_refs.inline_chat_media(body, policy))
    assert info.value.code == "too_many_media_parts"


def test_an_image_or_video_over_its_pixel_cap_is_refused_from_its_header():
    """A few KB of PNG or VP9 may claim gigabytes of pixels: refused before vLLM decodes them
    (here small files against small caps)."""
    policy = MediaFetchPolicy(max_image_pixels=64 * 48 - 1)
    with pytest.raises(APIError) as info:
        asyncio.run(
            media_refs.inline_chat_media(_chat(_data_url("image/png", image_file())), policy)
        )
    assert (info.value.status_code, info.value.code) == (413, "image_too_large")
    assert "64x48" in info.value.message
    assert asyncio.run(
        media_refs.inline_chat_media(
            _chat(_data_url("image/png", image_file())), MediaFetchPolicy(max_image_pixels=64 * 48)
        )
    )
    video = {"type": "video_url", "video_url": {"url": _data_url("video/mp4", video_file())}}
    body = {"messages": [{"role": "user", "content": [video]}]}
    with pytest.raises(APIError) as info:
        asyncio.run(
            media_refs.inline_chat_media(body, MediaFetchPolicy(max_frame_pixels=64 * 48 - 1))
        )
    assert (info.value.status_code, info.value.code) == (413, "video_too_large")


@pytest.mark.parametrize(("fmt", "codec"), [("webm", "libvpx"), ("mp4", "libx264")])
def test_a_video_whose_later_frame_grows_past_the_pixel_cap_is_refused(fmt, codec):
    """The header (and first frame) say 64x48; the third frame is 320x240: refused with the same
    413 as a video too large from its first frame, before vLLM converts any frame."""
    clip = _data_url(f"video/{fmt}", growing_video_file(fmt, codec))
    body = {"messages": [{"role": "user", "content": [{"video_url": {"url": clip}}]}]}
    with pytest.raises(APIError) as info:
        asyncio.run(media_refs.inline_chat_media(body, MediaFetchPolicy(max_frame_pixels=64 * 48)))
    assert (info.value.status_code, info.value.code) == (413, "video_too_large")
    assert info.value.message == "the video's frames are 320x240 pixels; the limit is 3072"
    assert asyncio.run(
        media_refs.inline_chat_media(body, MediaFetchPolicy(max_frame_pixels=320 * 240))
    )


def _video_chat(data: bytes, media_type: str = "video/mp4") -> dict:
    video = {"type": "video_url", "video_url": {"url": _data_url(media_type, data)}}
    return {"messages": [{"role": "user", "content": [video]}]}


@pytest.mark.parametrize(
    "policy",
    [MediaFetchPolicy(max_video_frames=15), MediaFetchPolicy(max_video_check_s=1e-9)],
    ids=["frames", "seconds"],
)
def test_checking_a_videos_frames_is_bounded_in_frames_and_time(policy):
    """The frame check runs in a thread that the request's timeout cannot stop: a few MB of
    near-static frames would keep it decoding for minutes. Past the frames or the seconds it may
    spend, a 413; the same 16-frame clip passes within them."""
    with pytest.raises(APIError) as info:
        asyncio.run(media_refs.inline_chat_media(_video_chat(video_file(frames=16)), policy))
    assert (info.value.status_code, info.value.code) == (413, "video_too_long")
    ok = MediaFetchPolicy(max_video_frames=16)
    assert asyncio.run(media_refs.inline_chat_media(_video_chat(video_file(frames=16)), ok))


def test_a_video_in_a_container_the_check_cannot_read_is_refused_not_passed_on():
    """vLLM would probe any format FFmpeg knows; what the pixel check cannot read is a 400."""
    with pytest.raises(APIError) as info:
        asyncio.run(
            media_refs.inline_chat_media(_video_chat(b"\x47" + bytes(187) * 8), MediaFetchPolicy())
        )
    assert (info.value.status_code, info.value.code) == (400, "unsupported_format")
