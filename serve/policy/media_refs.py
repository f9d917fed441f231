"""Media that chat messages name by URL (``image_url``, ``video_url``, ``audio_url``) is fetched
here, under the operator's media policy, and handed to vLLM inline as ``data:`` URLs, so the
engine never reaches out itself: no request can make it read a local file or an address the
operator did not allow."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

from common.input_errors import InputError
from common.media import check_media_pixels
from common.media_fetch import ByteBudget, MediaFetchPolicy, decode_data_url, fetch_media
from common.task_groups import all_or_none
from serve.router.errors import APIError

MEDIA_PARTS = {"image_url": "image", "video_url": "video", "audio_url": "audio"}
# Parts vLLM decodes from the body itself (audio as base64, embeddings as tensors): nothing to
# fetch, but each one is work for the engine, so they count against the parts cap too.
INLINE_MEDIA_KEYS = ("input_audio", "image_embeds", "audio_embeds", "video_embeds", "prompt_embeds")


async def inline_chat_media(
    body: dict[str, Any], policy: MediaFetchPolicy, hold: Callable[[int], None] | None = None
) -> bool:
    """Replace every http(s) media URL in ``body['messages']`` with a data: URL, in place; True
    when the messages carry any media. ``hold``: takes the bytes of each download as they arrive
    from a memory budget (it raises when the budget is spent).

    A part counts as media when it carries a media key, whatever its ``type`` says (or lacks):
    vLLM reads untyped parts too, so a policy that looked only at ``type`` could be walked around.
    """
    messages = body.get("messages") or []
    parts = list(_media_parts(messages))
    try:
        if (count := len(parts) + _inline_media_count(messages)) > policy.max_parts_per_request:
            raise InputError(
                f"the messages carry {count} media parts; the limit is "
                f"{policy.max_parts_per_request}",
                "too_many_media_parts",
            )
        budget = policy.budget(_url(part, key) for part, key in parts)
        budget.hold = hold
        await all_or_none(_inline(part, key, policy, budget) for part, key in parts)
    except InputError as err:
        raise APIError.from_input(err, param="messages") from None
    return bool(parts)


def chat_images(body: dict[str, Any]) -> int:
    """The images a chat body holds (parts with an ``image_url``, whatever their ``type``, as
    vLLM reads them), for the usage ledger: counted from the body, on both paths alike (vLLM's
    app answers the one-hop path and reports none)."""
    return sum("image_url" in part for part in _content_parts(body.get("messages")))


def _media_parts(messages: Any):
    """(part, media key) for every media key of every content part."""
    for part in _content_parts(messages):
        yield from ((part, key) for key in MEDIA_PARTS if key in part)


def _inline_media_count(messages: Any) -> int:
    return sum(key in part for part in _content_parts(messages) for key in INLINE_MEDIA_KEYS)


def _content_parts(messages: Any):
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict):
                yield part


def _url(part: dict[str, Any], key: str) -> str:
    holder = part[key]
    url = holder.get("url") if isinstance(holder, dict) else holder
    return url if isinstance(url, str) else ""


async def _inline(
    part: dict[str, Any], key: str, policy: MediaFetchPolicy, budget: ByteBudget
) -> None:
    holder, url = part[key], _url(part, key)
    if not url:
        raise InputError(f"{key} needs a url", "invalid_media_url")
    kind = MEDIA_PARTS[key]
    if url.startswith("data:"):  # vLLM decodes data: URLs itself, once their size is known
        data, _ = decode_data_url(url, policy.max_bytes)
        return await _check_pixels(kind, data, policy)
    data, media_type = await fetch_media(url, policy, budget)
    await _check_pixels(kind, data, policy)
    media_type = media_type.split(";")[0].strip() if media_type else f"{kind}/*"
    inlined = f"data:{media_type};base64,{base64.b64encode(data).decode()}"
    if isinstance(holder, dict):
        holder["url"] = inlined
    else:  # vLLM also takes the bare string form: {"image_url": "https://..."}
        part[key] = inlined


async def _check_pixels(kind: str, data: bytes, policy: MediaFetchPolicy) -> None:
    """The pixel caps, in a thread: a video's check decodes each of its frames, which must not
    hold up the other requests on this event loop."""
    await asyncio.to_thread(
        check_media_pixels,
        kind,
        data,
        policy.max_image_pixels,
        policy.max_frame_pixels,
        policy.max_video_frames,
        policy.max_video_check_s,
    )
