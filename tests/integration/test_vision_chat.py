"""Vision-language chat on the CPU: tiny-llava (random weights, a real LLaVA processor) served by
the transformers vision-chat engine, called with the real openai client."""

from __future__ import annotations

import http.server
import threading

import openai
import pytest

from tests.integration.helpers import IMAGE_HOST, assert_still_serving
from tests.media_files import b64, image_file

VLM = "tiny-llava"
PNG = image_file("PNG", 64, 48)
QUESTION = "What is in this picture?"


def _ask(url: str) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": QUESTION},
            ],
        }
    ]


@pytest.fixture(scope="module")
def image_server():
    """An HTTP server on an address the session's media policy allows, counting its requests."""
    served: list[str] = []

    class Images(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            served.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer((IMAGE_HOST, 0), Images)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://{IMAGE_HOST}:{server.server_address[1]}", served
    server.shutdown()


def test_the_model_is_a_vision_model_that_chats(client):
    card = client.models.retrieve(VLM)
    assert card.type == "vision" and card.capabilities == ["chat"]


def test_an_image_as_a_data_url_gets_an_answer(client):
    reply = client.chat.completions.create(
        model=VLM, messages=_ask(f"data:image/png;base64,{b64(PNG)}"), max_tokens=8, temperature=0
    )
    assert reply.model == VLM and reply.choices[0].finish_reason in ("length", "stop")
    assert isinstance(reply.choices[0].message.content, str) and reply.usage.completion_tokens <= 8
    text_only = client.chat.completions.create(
        model=VLM, messages=[{"role": "user", "content": QUESTION}], max_tokens=1
    )
    assert reply.usage.prompt_tokens > text_only.usage.prompt_tokens  # the image's patch tokens


def test_a_stream_says_what_the_whole_answer_says(client):
    messages = _ask(f"data:image/png;base64,{b64(PNG)}")
    whole = client.chat.completions.create(
        model=VLM, messages=messages, max_tokens=12, temperature=0
    )
    chunks = list(
        client.chat.completions.create(
            model=VLM,
            messages=messages,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == whole.choices[0].message.content
    )
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[
        0
    ].finish_reason


def test_an_allowed_http_image_is_fetched_by_the_router_once(client, image_server):
    base, served = image_server
    before = len(served)
    reply = client.chat.completions.create(
        model=VLM, messages=_ask(f"{base}/cat.png"), max_tokens=4
    )
    assert reply.choices[0].finish_reason in ("length", "stop")
    assert served[before:] == ["/cat.png"]


@pytest.mark.parametrize(
    "content,extra,param",
    [
        (
            [{"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}],
            {},
            "messages",
        ),
        (
            [{"type": "image_url", "image_url": {"url": "http://localhost:8000/cat.png"}}],
            {},
            "messages",
        ),
        (QUESTION, {"max_tokens": 100000}, "max_tokens"),
        (QUESTION, {"n": 2}, "n"),
        (
            QUESTION,
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
            "tools",
        ),
    ],
)
def test_bad_inputs_are_400s(client, content, extra, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=VLM, messages=[{"role": "user", "content": content}], **extra
        )
    assert info.value.body["param"] == param
    assert_still_serving(client)
