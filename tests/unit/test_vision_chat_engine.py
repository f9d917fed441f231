"""The vision-chat engine's message handling, without a model."""

import base64
import io
import types

import pytest
from PIL import Image

from configs.open_api_models import InvalidRequest
from servers.vision_chat_engine import MAX_IMAGES, _chunk_event, _conversation, _stop_at

LIMITS = types.SimpleNamespace(max_image_bytes=1 << 20, max_image_pixels=10_000)


def _png(width=8, height=8) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_messages_become_the_templates_parts_with_images_decoded():
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look:"},
                {"type": "image_url", "image_url": {"url": _png()}},
            ],
        },
    ]
    conversation, images = _conversation(messages, LIMITS)
    assert conversation == [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Look:"}, {"type": "image"}]},
    ]
    assert [image.size for image in images] == [(8, 8)]


@pytest.mark.parametrize(
    "part,words",
    [
        ({"type": "image_url", "image_url": {"url": "http://example.org/x.png"}}, "data: URL"),
        ({"image_url": {"url": "file:///etc/passwd"}}, "data: URL"),  # untyped parts are media too
        ({"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}, "not supported"),
    ],
)
def test_parts_it_cannot_take_are_refused(part, words):
    with pytest.raises(InvalidRequest, match=words):
        _conversation([{"role": "user", "content": [part]}], LIMITS)


def test_images_over_the_pixel_limit_or_count_are_refused():
    with pytest.raises(Exception) as big:
        _conversation(
            [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": _png(200, 200)}}],
                }
            ],
            LIMITS,
        )
    assert big.value.status_code == 413 and big.value.param == "messages"
    many = [{"type": "image_url", "image_url": {"url": _png()}}] * (MAX_IMAGES + 1)
    with pytest.raises(InvalidRequest, match="images"):
        _conversation([{"role": "user", "content": many}], LIMITS)


def test_stop_sequences_and_chunks():
    assert _stop_at("hello world. more", [". ", "zzz"]) == 11 and _stop_at("hello", ["x"]) is None
    event = _chunk_event("id-1", 7, "m")
    assert event({"content": "hi"}).startswith(
        'data: {"id":"id-1","object":"chat.completion.chunk","created":7'
    )
    assert '"choices":[],"usage":{"completion_tokens":1}' in event(
        None, usage={"completion_tokens": 1}
    )
