"""The YAML's pipelines end to end on the offline models: voice-chat (Whisper -> chat -> VITS),
rag-lite (the real MiniLM ranks documents -> chat) and describe-image (captioner -> chat)."""

from __future__ import annotations

import base64
import io
import wave
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.audio_files import audio_file
from tests.integration.helpers import PIPELINE_TOKENS_KEY, assert_still_serving, auth_headers
from tests.integration.session_config import REAL_CHAT
from tests.media_files import image_file

DOCUMENTS = [
    "The stock market fell sharply today.",
    "A cat says meow and purrs when it is happy.",
    "Dogs bark at the mailman.",
]


def _run(http: httpx.Client, body: dict) -> httpx.Response:
    return http.post("/v1/pipelines", json=body, timeout=180)


def _step_timings(response: httpx.Response) -> list[float]:
    return [
        float(part.split("dur=")[1].split(";")[0])
        for part in response.headers["server-timing"].split(", ")
    ]


def test_pipelines_are_listed_as_models_of_type_pipeline(client):
    cards = {m.id: m for m in client.models.list().data}
    assert {cards[p].type for p in ("voice-chat", "rag-lite", "describe-image")} == {"pipeline"}
    assert cards["voice-chat"].steps == [
        {"task": "transcribe", "model": "tiny-whisper"},
        {"task": "chat", "model": REAL_CHAT},
        {"task": "speak", "model": "tiny-tts"},
    ]
    assert cards["rag-lite"].inputs == ["text", "documents"]


def test_voice_chat_hears_answers_and_speaks(http):
    audio = base64.b64encode(audio_file("wav", "pcm_s16le", seconds=2.0)).decode()
    response = _run(http, {"model": "voice-chat", "audio": audio})
    assert response.status_code == 200, response.text
    result = response.json()
    transcript, reply, speech = (step["output"] for step in result["steps"])
    assert [s["model"] for s in result["steps"]] == ["tiny-whisper", REAL_CHAT, "tiny-tts"]
    assert isinstance(transcript["text"], str) and reply["text"] == result["output"]["text"]
    with wave.open(
        io.BytesIO(base64.b64decode(result["output"]["audio"]))
    ) as wav:  # a playable WAV
        assert wav.getnframes() > 0 and wav.getframerate() > 0
    assert (
        speech["audio"] == result["output"]["audio"] and result["output"]["audio_format"] == "wav"
    )
    timings = _step_timings(response)
    assert len(timings) == 3 and timings == [s["latency_ms"] for s in result["steps"]]


def test_rag_lite_answers_from_the_document_the_real_embedder_ranks_first(http):
    response = _run(
        http, {"model": "rag-lite", "text": "Which animal purrs?", "documents": DOCUMENTS}
    )
    assert response.status_code == 200, response.text
    result = response.json()
    context = result["steps"][0]["output"]["context"].split("\n")
    assert context[0] == DOCUMENTS[1] and len(context) == 2  # top_n: 2, the cat first
    assert result["output"]["text"] == result["steps"][1]["output"]["text"]


def test_concurrent_runs_on_a_token_limited_key_cannot_all_pass_and_get_no_5xx(platform_url):
    """Each step reserves its prompt + max_tokens before it calls its model (rag-lite's chat: 48
    and a prompt of the context), so four runs at once on a key of 100 tokens a minute cannot all
    be answered: the steps that find no room are 429s, never a 5xx."""
    body = {"model": "rag-lite", "text": "Which animal purrs?", "documents": DOCUMENTS}

    def run(_) -> httpx.Response:
        return httpx.post(
            f"{platform_url}/v1/pipelines",
            json=body,
            headers=auth_headers(PIPELINE_TOKENS_KEY),
            timeout=180,
        )

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(run, range(4)))
    codes = [a.status_code for a in answers]
    assert set(codes) <= {200, 429} and 429 in codes, [a.text[:200] for a in answers]
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limit_exceeded", refused.text
    assert int(refused.headers["retry-after"]) >= 1


def test_describe_image_captions_then_chats(http):
    image = "data:image/png;base64," + base64.b64encode(image_file("PNG")).decode()
    response = _run(http, {"model": "describe-image", "image": image})
    assert response.status_code == 200, response.text
    caption, answer = (step["output"]["text"] for step in response.json()["steps"])
    assert isinstance(caption, str) and isinstance(answer, str)


@pytest.mark.parametrize(
    "body,status,param",
    [
        (
            {"model": "voice-chat", "audio": base64.b64encode(b"%PDF-1.4 not audio").decode()},
            400,
            None,
        ),  # step 0 refuses
        (
            {"model": "voice-chat", "audio": "http://127.0.0.1:1/secret.wav"},
            400,
            "audio",
        ),  # not an allowed address
        ({"model": "rag-lite", "text": "q"}, 400, "documents"),
        ({"model": "describe-image", "image": "@@@"}, 400, "image"),
        ({"model": "no-such-pipeline", "text": "q"}, 404, "model"),
    ],
)
def test_bad_inputs_are_4xx_and_the_platform_keeps_serving(http, client, body, status, param):
    response = _run(http, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and (param is None or error["param"] == param)
    assert_still_serving(client)
