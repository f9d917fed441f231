"""Vision-language chat with transformers: ``/v1/chat/completions`` with ``image_url`` parts, for
image-text-to-text models (LLaVA, Idefics3/SmolVLM, Qwen2-VL, InternVL with
``trust_remote_code``) where vLLM cannot run them (its CPU build has no VLM processors).

The model's own processor and chat template build the prompt; ``generate`` runs on one model
thread, a request at a time, its streamer handing each piece of text to the event loop. Answers
and chunks have OpenAI's shapes (ids, usage, ``finish_reason``); a client that leaves stops
generation. The router has already inlined every image as a ``data:`` URL under the media policy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cloud.storage import resolve_model_source
from common.devices import torch_device, torch_dtype
from common.engine_response import EngineResponse
from common.input_errors import InputError
from common.media import decode_image
from common.media_fetch import decode_data_url
from configs.open_api_models import InvalidRequest, parse_request
from configs.server_models import Capability
from configs.vision_models import VisionModelEntry
from servers.base_engine import BaseEngine

logger = logging.getLogger(__name__)

# Fields of OpenAI's chat request this engine honours; others it refuses rather than ignore.
SUPPORTED = {
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stream",
    "stream_options",
    "stop",
    "n",
    "user",
    "request_id",
}
MAX_IMAGES = 8


class VisionChatEngine(BaseEngine):
    entry: VisionModelEntry

    def __init__(self, entry: VisionModelEntry):
        super().__init__(entry)
        self.kwargs = entry.engine_kwargs
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.requests_in_flight = 0
        self.generations_stopped = 0

    async def start(self) -> None:
        source = resolve_model_source(self.entry.model_loading_config.model_source)
        device = torch_device()
        dtype = torch_dtype(self.kwargs.dtype, device)
        await asyncio.get_running_loop().run_in_executor(
            self._model_thread, self._load, source, device, dtype
        )
        logger.info("vision chat model %s ready on %s (%s)", self.entry.model_id, device, dtype)

    def _load(self, source: str, device: str, dtype: Any) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        options = {
            "revision": self.kwargs.revision,
            "trust_remote_code": self.kwargs.trust_remote_code,
        }
        self.processor = AutoProcessor.from_pretrained(source, **options)
        self.model = (
            AutoModelForImageTextToText.from_pretrained(source, dtype=dtype, **options)
            .to(device)
            .eval()
        )
        self.device = device

    def stats(self) -> dict[str, Any]:
        return {
            "requests_in_flight": self.requests_in_flight,
            "generations_stopped": self.generations_stopped,
        }

    async def handle(self, capability: Capability, body: dict[str, Any]) -> EngineResponse:
        chunks = [chunk async for chunk in self._generate(capability, body)]
        if isinstance(chunks[0], EngineResponse):
            return chunks[0]
        *pieces, (finish, usage) = chunks
        return EngineResponse.json(_completion(self.entry.model_id, "".join(pieces), finish, usage))

    async def handle_stream(
        self, capability: Capability, body: dict[str, Any]
    ) -> AsyncGenerator[str | EngineResponse, None]:
        chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        event = _chunk_event(chunk_id, created, self.entry.model_id)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        started = False
        async for piece in self._generate(capability, body):
            if isinstance(piece, EngineResponse):
                yield piece
                return
            if not started:
                yield event({"role": "assistant", "content": ""})
                started = True
            if isinstance(piece, tuple):
                finish, usage = piece
                yield event({}, finish)
                if include_usage:
                    yield event(None, usage=usage)
                yield "data: [DONE]\n\n"
            elif piece:
                yield event({"content": piece})

    async def _generate(
        self, capability: Capability, body: dict[str, Any]
    ) -> AsyncGenerator[Any, None]:
        """The answer's text pieces, then (finish_reason, usage); or one EngineResponse (an
        error)."""
        try:
            prompt, images, options = self._prepare(capability, body)
            inputs = await asyncio.to_thread(self._encode, prompt, images)
        except InputError as err:
            yield EngineResponse.error(err.status_code, err.message, param=err.param, code=err.code)
            return
        prompt_tokens = int(inputs["input_ids"].shape[1])
        stop = threading.Event()
        self.requests_in_flight += 1
        try:
            pieces, generation = self._start_generation(inputs, options, stop)
            text, cut = "", None
            while (piece := await pieces.get()) is not None:
                text += piece
                cut = _stop_at(text, options["stop"])
                if cut is not None:
                    yield piece[: len(piece) - (len(text) - cut)]
                    stop.set()
                    break
                yield piece
            produced = await asyncio.wrap_future(generation)
            finish = "stop" if cut is not None or produced < options["max_new_tokens"] else "length"
            yield (
                finish,
                {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": produced,
                    "total_tokens": prompt_tokens + produced,
                },
            )
        except (
            asyncio.CancelledError,
            GeneratorExit,
        ):  # the client left: stop generating for nobody
            stop.set()
            self.generations_stopped += 1
            raise
        finally:
            self.requests_in_flight -= 1

    def _prepare(self, capability: Capability, body: dict[str, Any]) -> tuple[list, list, dict]:
        if capability is not Capability.CHAT:
            raise InvalidRequest(f"model {self.entry.model_id!r} serves chat only", "model")
        unsupported = [
            key for key, value in body.items() if key not in SUPPORTED and value is not None
        ]  # as sent
        if unsupported:
            raise InvalidRequest(
                f"{unsupported[0]} is not supported by this model's engine (transformers)",
                unsupported[0],
            )
        request = parse_request(capability, body)
        if (request.n or 1) != 1:
            raise InvalidRequest("n must be 1 for this model", "n")
        limit = self.kwargs.max_new_tokens
        wanted = request.max_completion_tokens or request.max_tokens or limit
        if wanted > limit:
            raise InvalidRequest(
                f"max_tokens ({wanted}) is over this model's max_new_tokens ({limit})", "max_tokens"
            )
        conversation, images = _conversation(body["messages"], self.kwargs)
        stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        options = {
            "max_new_tokens": wanted,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
            "stop": stop,
        }
        return conversation, images, options

    def _encode(self, conversation: list, images: list) -> Any:
        prompt = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        return self.processor(text=prompt, images=images or None, return_tensors="pt").to(
            self.device
        )

    def _start_generation(self, inputs: Any, options: dict, stop: threading.Event):
        """``generate`` on the model thread; its text arrives on the returned queue (None: the end),
        and the future gives the number of tokens produced."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        put = lambda item: loop.call_soon_threadsafe(pieces.put_nowait, item)  # noqa: E731

        class QueueStreamer(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                if text:
                    put(text)

        class Stopped(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return stop.is_set()

        streamer = QueueStreamer(
            self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True
        )
        sampling = (options["temperature"] or 0) > 0
        kwargs = {
            "max_new_tokens": options["max_new_tokens"],
            "do_sample": sampling,
            "streamer": streamer,
            "stopping_criteria": StoppingCriteriaList([Stopped()]),
        }
        if sampling:
            kwargs.update(temperature=options["temperature"], top_p=options["top_p"] or 1.0)

        def run() -> int:
            try:
                if options["seed"] is not None:
                    torch.manual_seed(options["seed"])
                with torch.inference_mode():
                    output = self.model.generate(**inputs, **kwargs)
                return int(output.shape[1] - inputs["input_ids"].shape[1])
            finally:
                put(None)

        return pieces, self._model_thread.submit(run)

    async def shutdown(self) -> None:
        self._model_thread.shutdown(wait=False, cancel_futures=True)


def _conversation(messages: list[dict[str, Any]], limits: Any) -> tuple[list, list]:
    """OpenAI messages as the processor's chat template takes them, and their images decoded."""
    conversation, images = [], []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            conversation.append(
                {"role": message["role"], "content": [{"type": "text", "text": content or ""}]}
            )
            continue
        parts = []
        for part in content:
            if "image_url" in part or part.get("type") == "image_url":
                url = (part.get("image_url") or {}).get("url", "")
                if not url.startswith("data:"):  # the router inlines every allowed URL
                    raise InvalidRequest("image_url must be a data: URL here", "messages")
                try:
                    images.append(
                        decode_image(
                            decode_data_url(url, limits.max_image_bytes)[0], limits.max_image_pixels
                        )
                    )
                except InputError as err:
                    err.param = "messages"
                    raise
                parts.append({"type": "image"})
            elif part.get("type") == "text":
                parts.append({"type": "text", "text": part.get("text", "")})
            else:
                raise InvalidRequest(
                    f"content parts of type {part.get('type')!r} are not supported by this model",
                    "messages",
                )
        conversation.append({"role": message["role"], "content": parts})
    if len(images) > MAX_IMAGES:
        raise InvalidRequest(
            f"{len(images)} images; this model takes up to {MAX_IMAGES} per request", "messages"
        )
    return conversation, images


def _stop_at(text: str, stops: list[str]) -> int | None:
    positions = [text.find(s) for s in stops if s and s in text]
    return min(positions) if positions else None


def _completion(model: str, text: str, finish: str, usage: dict) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        ],
        "usage": usage,
    }


def _chunk_event(chunk_id: str, created: int, model: str):
    def event(delta: dict | None, finish: str | None = None, usage: dict | None = None) -> str:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        chunk = {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
            **({"usage": usage} if usage else {}),
        }
        return f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"

    return event
