"""What a request may spend and what it did: the tokens reserved when it is admitted, and the
tokens counted from its answer as the answer passes, charged once however the request ends.

A stream is asked to carry its usage on every chunk (vLLM's ``continuous_usage_stats``), so the
last count seen is what it generated when the client leaves, the timeout cuts it or the replica
dies; the usage the client did not ask for is taken out of what it gets. A JSON answer carries its
``usage`` (raw-bytes embeddings, in a header).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from starlette.types import Message, Send

from common.media_usage import MEASURES, NO_MEDIA, MediaUsage
from common.metrics import platform_metrics
from common.streaming import is_event_stream
from configs.api_keys import APIKey
from serve.usage.database import UsageDatabase
from serve.usage.ledger import Answered


@dataclass(frozen=True)
class UsageAsked:
    """What usage the client itself asked a stream for: the final event, and usage on every
    chunk."""

    final: bool = False
    continuous: bool = False


def ask_for_usage(body: dict[str, Any]) -> UsageAsked:
    """Make a streamed request carry its usage on every chunk and at its end (vLLM's
    ``continuous_usage_stats``), so a stream that ends early is charged what it generated; what
    the client had asked for itself."""
    options = body.get("stream_options")
    if not isinstance(options, dict):
        options = {}
    asked = UsageAsked(
        bool(options.get("include_usage")), bool(options.get("continuous_usage_stats"))
    )
    body["stream_options"] = {**options, "include_usage": True, "continuous_usage_stats": True}
    return asked


USAGE_HEADER = "metadata"  # vLLM's embeddings as raw bytes carry their ids and usage in this header


def ask_for_usage_header(body: dict[str, Any]) -> bool:
    """Make embeddings asked as raw bytes carry the usage header (``bytes``; ``bytes_only`` has
    none); whether the client wanted the header itself."""
    if body.get("encoding_format") != "bytes_only":
        return True
    body["encoding_format"] = "bytes"
    return False


@dataclass(frozen=True)
class TokenCounts:
    """An answer's ``usage``: its prompt's tokens and the rest of ``total_tokens`` (generated)."""

    prompt: int = 0
    completion: int = 0

    @property
    def total(self) -> int:
        return self.prompt + self.completion

    @classmethod
    def of(cls, usage: dict[str, Any]) -> TokenCounts:
        total = int(usage.get("total_tokens") or 0)
        prompt = min(int(usage.get("prompt_tokens") or 0), total)
        return cls(prompt, total - prompt)


def response_usage(content: bytes, usage_header: str | bytes | None = None) -> TokenCounts:
    """The ``usage`` of a JSON answer, or of the usage header of a raw-bytes one (none when
    neither has it)."""
    for text in (content, usage_header):
        if text is None:
            continue
        try:
            usage = json.loads(text).get("usage") or {}
        except (TypeError, ValueError, AttributeError):
            continue
        return TokenCounts.of(usage)
    return TokenCounts()


def response_tokens(content: bytes, usage_header: str | bytes | None = None) -> int:
    """``usage.total_tokens`` of a JSON answer, or of the usage header of a raw-bytes one (0 when
    neither has it)."""
    return response_usage(content, usage_header).total


# A chunk's own "usage" object: a quote inside a JSON string is escaped, so this key is the
# chunk's, and usage holds only counts (one nested level: prompt_tokens_details).
_USAGE_FIELD_START = ',"usage":{'
_USAGE_FIELD = re.compile(r',"usage":(\{(?:[^{}"]|"[a-z_]+"|\{[^{}]*\})*\})')
_NO_CHOICES = '"choices":[]'
_CHOICE_INDEX = re.compile(r'"choices":\[\{"index":(\d+)')  # the chunk's choice (vLLM writes one)


class StreamMeter:
    """Counts a server-sent event stream's tokens from the usage on its chunks (the last count
    seen is what the stream generated, however it ends), and takes out the usage the client did
    not ask for.

    vLLM's usage on a chunk counts the prompt and that chunk's choice's tokens only: with ``n``
    choices the stream has spent the prompt once and each choice's last count, until the final
    usage event counts them all."""

    def __init__(self, asked: UsageAsked):
        self.asked = asked
        self.counts = TokenCounts()
        self._partial = ""
        self._by_choice: dict[int, int] = {}  # each choice's generated tokens so far

    def _saw(self, usage: TokenCounts, choice: int | None) -> None:
        """A chunk's usage, of choice ``choice`` (None: the final usage event, of them all)."""
        if choice is None:
            self._by_choice.clear()
            self.counts = usage
            return
        self._by_choice[choice] = usage.completion
        self.counts = TokenCounts(usage.prompt, sum(self._by_choice.values()))

    def feed(self, text: str) -> str:
        """``text`` (whole events, or the rest of one) without the usage not asked for."""
        *events, self._partial = (self._partial + text).split("\n\n")
        kept = (self._kept(event) for event in events)
        return "".join(event + "\n\n" for event in kept if event is not None)

    @property
    def tokens(self) -> int:
        return self.counts.total

    def flush(self) -> str:
        """What is left of an event the stream did not finish with a blank line."""
        rest, self._partial = self._partial, ""
        return (self._kept(rest) or "") if rest else ""

    def _kept(self, event: str) -> str | None:
        """The event as the client gets it; None to drop it."""
        data = event.removeprefix("data: ")
        if '"usage"' not in data:
            return event
        start = data.rfind(_USAGE_FIELD_START)
        if start < 0 or _NO_CHOICES in data:  # no usage object, or the event that ends the stream
            return self._kept_parsed(event, data)
        # A token's chunk, one per token on every stream: its usage is cut out of the text, not
        # parsed and written again with the whole chunk (a tenth of the CPU per chunk).
        usage = _USAGE_FIELD.match(data, start)
        try:
            counts = TokenCounts.of(json.loads(usage.group(1))) if usage else None
        except ValueError:
            counts = None
        if usage is None or counts is None:
            return self._kept_parsed(event, data)
        index = _CHOICE_INDEX.search(data, 0, start)
        self._saw(counts, int(index[1]) if index else 0)
        if self.asked.continuous:
            return event
        kept = ',"usage":null' if self.asked.final else ""  # as vLLM sends a chunk then
        return f"data: {data[:start]}{kept}{data[usage.end() :]}"

    def _kept_parsed(self, event: str, data: str) -> str | None:
        """``_kept`` for an event whose usage is not a token chunk's, by parsing it whole."""
        try:
            chunk = json.loads(data)
        except ValueError:
            return event
        usage = chunk.get("usage") if isinstance(chunk, dict) else None
        if not usage:
            return event
        choices = chunk.get("choices")
        if not choices:  # the usage event that ends the stream: every choice's tokens
            self._saw(TokenCounts.of(usage), None)
            return event if self.asked.final else None
        first = choices[0] if isinstance(choices, list) else None
        index = first.get("index") if isinstance(first, dict) else None
        self._saw(TokenCounts.of(usage), index if isinstance(index, int) else 0)
        if self.asked.continuous:
            return event
        if self.asked.final:
            chunk["usage"] = None  # as vLLM sends a chunk when only the final usage was asked
        else:
            del chunk["usage"]
        return "data: " + json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))


MAX_METERED_ANSWER_BYTES = (
    64 * 1024 * 1024
)  # a JSON answer read for its usage (embeddings can be large)


class MeteredAnswer:
    """An answer's ``send`` that counts its tokens: from the usage on an event stream's chunks
    (``meter``), or from the JSON answer's ``usage`` (the usage header of raw-bytes embeddings).
    ``settle`` charges them once, when the body ends or when the request ends any other way.
    Error answers (JSON even for a stream request) pass unchanged.

    A JSON answer that never finished once the request reached the model (the client left, the
    timeout cut it) carries no usage to count: it is charged ``reserved``, the most it could have
    spent, or leaving just before the end would cost nothing. A stream cut before its first
    usage (the client left while the prompt was read) is charged ``prompt``, the prompt's
    guessed tokens: reading it was the work done."""

    def __init__(
        self,
        send: Send,
        meter: StreamMeter | None,
        spend,
        keep_usage_header=True,
        reserved=0,
        prompt=0,
    ):
        self._send, self.meter, self._spend = send, meter, spend
        self.keep_usage_header, self.reserved, self.prompt = keep_usage_header, reserved, prompt
        self.reached_model = False  # set once every check passed and the model's app has it
        self._answer = bytearray()
        self._started: dict[str, Any] = {}
        self._finished = self._settled = False
        self.counts = TokenCounts()  # what ``settle`` charged

    async def send(self, message: Message) -> None:
        usage_header = USAGE_HEADER.encode()
        if message["type"] == "http.response.start":
            headers = message.get("headers") or []
            self._started.update(
                status=message["status"],
                usage=dict(headers).get(usage_header),
                events=is_event_stream(headers),
            )
            if not self.keep_usage_header:
                kept = [(k, v) for k, v in headers if k.lower() != usage_header]
                message = {**message, "headers": kept}
        elif message["type"] == "http.response.body":
            body, last = message.get("body", b""), not message.get("more_body", False)
            if self.meter is not None and self._started.get("events"):
                text = self.meter.feed(body.decode("utf-8", "replace"))
                message = {
                    **message,
                    "body": (text + (self.meter.flush() if last else "")).encode(),
                }
            elif (
                self._started.get("status") == 200 and len(self._answer) < MAX_METERED_ANSWER_BYTES
            ):
                self._answer.extend(body)
            if last:
                self._finished = True
                self.settle()
        await self._send(message)

    def settle(self) -> None:
        if self._settled:
            return
        self._settled = True
        cut = self.reached_model and not self._finished
        if self.meter is not None and (self._started.get("events") or not self._started):
            self.counts = self.meter.counts
            if cut and not self.counts.total:  # no usage came: cut while the prompt was read
                self.counts = TokenCounts(self.prompt, 0)
        elif self.meter is None and cut:
            self.counts = TokenCounts(0, self.reserved)  # no usage came: the most it could spend
        else:
            self.counts = response_usage(bytes(self._answer), self._started.get("usage"))
        self._spend(self.counts.total)


CHARS_PER_TOKEN = 4  # a prompt's size in tokens, guessed from its text before any tokenizer runs


def reserved_tokens(body: dict[str, Any], context_tokens: int | None) -> int:
    """The tokens a request may spend, reserved at admission: its prompt's text (guessed) plus
    what it may generate (``max_tokens``, ``max_completion_tokens``, else the model's context),
    for each of its ``n`` choices.
    The real count replaces it when the request ends."""
    prompt = guessed_prompt_tokens(body)
    asked = [body.get(k) for k in ("max_tokens", "max_completion_tokens")]
    generated = next((n for n in asked if isinstance(n, int) and n >= 0), None)
    if generated is None and "messages" not in body and "prompt" not in body:
        generated = 0  # embeddings, scores, tokenize: the input is all they count
    choices = body.get("n")
    each = generated if generated is not None else (context_tokens or 0)
    return prompt + each * (choices if isinstance(choices, int) and choices > 1 else 1)


def guessed_prompt_tokens(body: dict[str, Any]) -> int:
    """A prompt's tokens guessed from its text (every string of the body but inlined media)."""
    return sum(len(text) for text in _texts(body)) // CHARS_PER_TOKEN


def _texts(body: dict[str, Any]):
    """Every string in a body but inlined media (``data:`` URLs, whose tokens the model counts
    its own way): the prompt's text, the tools' and schema's too. A loop, not recursion: a body
    may nest as deep as the JSON parser allowed."""
    pending: list[Any] = [body]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            if not value.startswith("data:"):
                yield value
        elif isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)


def record_answer(
    usage: UsageDatabase | None,
    key: APIKey | None,
    model: str,
    endpoint: str,
    status: int,
    counts: TokenCounts,
    latency_s: float,
    media: MediaUsage = NO_MEDIA,
) -> None:
    """One answered model call in the Prometheus counters by key name (``-``: the platform has no
    keys) and, when there is one, in the usage ledger: the policy's requests and pipeline steps."""
    answered = Answered(
        key_name=key.name if key is not None else "",
        model=model,
        endpoint=endpoint,
        status=status,
        prompt_tokens=counts.prompt,
        completion_tokens=counts.completion,
        latency_s=latency_s,
        at=time.time(),
        media=media,
    )
    metrics = platform_metrics()
    tags = {"key": answered.key_name or "-", "model": answered.model or "-"}
    metrics.key_requests.inc(1, {**tags, "status": str(answered.status)})
    for kind, tokens in (
        ("prompt", answered.prompt_tokens),
        ("completion", answered.completion_tokens),
    ):
        if tokens:
            metrics.key_tokens.inc(tokens, {**tags, "kind": kind})
    for kind in MEASURES:
        if amount := getattr(media, kind):
            metrics.key_media.inc(amount, {**tags, "kind": kind})
    if usage is not None:
        usage.record(answered)
