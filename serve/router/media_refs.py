"""Media that chat messages name by URL (``image_url``, ``video_url``, ``audio_url``) is fetched
here, under the operator's media policy, and handed to vLLM inline as ``data:`` URLs, so the
engine never reaches out itself: no request can make it read a local file or an address the
operator did not allow."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from common.input_errors import InputError
from common.media_fetch import MediaFetchPolicy, fetch_media
from serve.router.errors import APIError

MEDIA_PARTS = {"image_url": "image", "video_url": "video", "audio_url": "audio"}


async def inline_chat_media(body: dict[str, Any], policy: MediaFetchPolicy) -> None:
    """Replace every http(s) media URL in ``body['messages']`` with a data: URL, in place."""
    parts = list(_media_parts(body.get("messages") or []))
    try:
        await asyncio.gather(*(_inline(part, policy) for part in parts))
    except InputError as err:
        raise APIError(err.status_code, err.message, param="messages", code=err.code) from None


def _media_parts(messages: list[Any]):
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") in MEDIA_PARTS:
                    yield part


async def _inline(part: dict[str, Any], policy: MediaFetchPolicy) -> None:
    holder = part.get(part["type"])
    url = holder.get("url") if isinstance(holder, dict) else None
    if not isinstance(url, str) or not url:
        raise InputError(f"{part['type']} needs a url", "invalid_media_url")
    if url.startswith("data:"):
        return  # vLLM decodes data: URLs itself
    data, media_type = await fetch_media(url, policy)
    kind = MEDIA_PARTS[part["type"]]
    media_type = media_type.split(";")[0].strip() if media_type else f"{kind}/*"
    holder["url"] = f"data:{media_type};base64,{base64.b64encode(data).decode()}"
