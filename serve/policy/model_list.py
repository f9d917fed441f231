"""An app's own model list cut to the request key's scope: on the one-hop URL, vLLM's
``/v1/models`` lists its base model and every LoRA adapter it serves, whatever the key; the
router's ``/v1/models`` lists only what the key may use (``auth.visible``), and so must this, or a
key scoped to one adapter learns the ids of the others."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Message, Send

from configs.api_keys import APIKey


def in_scope(listing: Any, key: APIKey) -> dict[str, Any]:
    """``listing`` (an OpenAI model list) with only the models ``key`` may use; a card without a
    string id, or a listing of another shape, keeps nothing (cut, never passed whole)."""
    cards = listing.get("data") if isinstance(listing, dict) else None
    kept = [
        card
        for card in (cards if isinstance(cards, list) else [])
        if isinstance(card, dict) and isinstance(card.get("id"), str) and key.allows(card["id"])
    ]
    return {**(listing if isinstance(listing, dict) else {"object": "list"}), "data": kept}


class ScopedModelList:
    """A ``send`` that holds a model list's answer (a few KB) and sends it cut to ``key``'s scope,
    with its length set again; an error answer passes unchanged."""

    def __init__(self, send: Send, key: APIKey):
        self._send, self.key = send, key
        self._start: Message | None = None
        self._body = bytearray()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._start = message
            return
        if message["type"] != "http.response.body" or self._start is None:
            return await self._send(message)
        self._body.extend(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = bytes(self._body)
        if self._start["status"] == 200:
            try:
                listing = json.loads(body)
            except ValueError:
                listing = None
            body = json.dumps(in_scope(listing, self.key)).encode()
        headers = [
            (k, v) for k, v in self._start.get("headers", []) if k.lower() != b"content-length"
        ]
        headers.append((b"content-length", str(len(body)).encode()))
        await self._send({**self._start, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})
