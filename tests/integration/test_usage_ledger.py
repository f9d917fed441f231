"""The usage ledger and the admin API on the session platform (SQLite in its work dir): a key
made live is metered exactly on the router, on the one-hop URL and through a pipeline, and once
deleted it is refused on both paths within 5 s, with no replica restarted; ``/v2`` inference, the
audio uploads and speech are metered too, with their audio seconds, images and video seconds."""

from __future__ import annotations

import io
import re
import time
import uuid
from collections import Counter

import av
import httpx
import openai
import pytest

from common.media_usage import MEDIA_USAGE_HEADER
from tests.audio_files import audio_file, duration_s
from tests.integration.helpers import (
    ADMIN_KEY,
    API_KEY,
    auth_headers,
    replica_actors,
    wait_until,
)
from tests.integration.session_config import CHAT, EMBED, REAL_CHAT
from tests.media_files import b64, image_file, infer_body, video_file

CHAT_BODY = {"model": CHAT, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 5}
DOCUMENTS = ["A cat purrs when it is happy.", "Dogs bark at the mailman."]
REVOKED_WITHIN_S = 5  # the bound: every router and replica refuses a deleted key
WHISPER, TTS, IMAGES, VIDEO = "tiny-whisper", "tiny-tts", "tiny-vit", "tiny-videomae"


def _admin(http_method, platform_url: str, path: str, **kwargs) -> httpx.Response:
    return http_method(
        f"{platform_url}/admin{path}", headers=auth_headers(ADMIN_KEY), timeout=30, **kwargs
    )


def _usage(platform_url: str, **params) -> list[dict]:
    answer = _admin(httpx.get, platform_url, "/usage", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def test_the_admin_api_needs_an_admin_key(platform_url):
    anonymous = httpx.get(f"{platform_url}/admin/keys")
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "invalid_api_key"
    other = httpx.get(f"{platform_url}/admin/usage", headers=auth_headers(API_KEY))
    assert other.status_code == 403 and other.json()["error"]["code"] == "admin_key_required"


def container_duration_s(video: bytes) -> float:
    """A video's length as its container states it (what the client sent)."""
    with av.open(io.BytesIO(video)) as container:
        stream = container.streams.video[0]
        return float(stream.duration * stream.time_base)


def _key_metric(metrics_url: str, name: str, key: str) -> float:
    """The sum of ``ray_platform_<name>_total`` samples labelled with the key name ``key``."""
    total = 0.0
    for line in httpx.get(metrics_url, timeout=30).text.splitlines():
        match = re.fullmatch(rf"ray_platform_{name}_total\{{(.*)\}} (\S+)", line)
        if match and f'key="{key}"' in match[1]:
            total += float(match[2])
    return total


def test_a_made_key_is_metered_exactly_on_every_path_and_revoked_live(platform, platform_url):
    name = f"ledger-{uuid.uuid4().hex[:8]}"
    made = _admin(httpx.post, platform_url, "/keys", json={"name": name})
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    router = openai.OpenAI(base_url=f"{platform_url}/v1", api_key=key, max_retries=0, timeout=120)
    one_hop = openai.OpenAI(
        base_url=f"{platform_url}/models/{CHAT}/v1", api_key=key, max_retries=0, timeout=120
    )

    def served(client: openai.OpenAI) -> bool:
        try:
            client.models.list()
            return True
        except openai.AuthenticationError:
            return False

    for client in (router, one_hop):  # every router and replica reads new keys within 2 s
        assert wait_until(lambda c=client: served(c), bool, timeout_s=REVOKED_WITHIN_S)

    seen: Counter[tuple[str, str]] = Counter()

    def count(model: str, usage) -> None:
        seen[(model, "prompt")] += usage.prompt_tokens
        seen[(model, "completion")] += usage.total_tokens - usage.prompt_tokens

    count(CHAT, router.chat.completions.create(**CHAT_BODY).usage)
    count(CHAT, one_hop.chat.completions.create(**CHAT_BODY).usage)
    stream = router.chat.completions.create(
        **CHAT_BODY, stream=True, stream_options={"include_usage": True}
    )
    count(CHAT, [chunk for chunk in stream][-1].usage)
    count(EMBED, router.embeddings.create(model=EMBED, input="a few words").usage)
    pipeline = httpx.post(
        f"{platform_url}/v1/pipelines",
        json={"model": "rag-lite", "text": "Which animal purrs?", "documents": DOCUMENTS},
        headers=auth_headers(key),
        timeout=180,
    )
    assert pipeline.status_code == 200, pipeline.text

    def ledger() -> dict:
        rows = _usage(platform_url, key=name, group_by="model,endpoint")
        return {(r["model"], r["endpoint"]): r for r in rows}

    # the ledger is written within a second of each answer
    rows = wait_until(ledger, lambda r: ("smollm2", "/v1/pipelines") in r, timeout_s=10)
    chat = rows[(CHAT, "/v1/chat/completions")]
    assert chat["requests"] == 3 and chat["errors"] == 0
    assert (chat["prompt_tokens"], chat["completion_tokens"]) == (
        seen[(CHAT, "prompt")],
        seen[(CHAT, "completion")],
    )
    embed = rows[(EMBED, "/v1/embeddings")]
    assert (embed["requests"], embed["prompt_tokens"]) == (1, seen[(EMBED, "prompt")])
    steps = rows[(REAL_CHAT, "/v1/pipelines")]
    assert steps["requests"] == 1 and steps["completion_tokens"] > 0
    assert rows[(EMBED, "/v1/pipelines")]["requests"] == 1  # the rerank step

    spent = sum(r["total_tokens"] for r in rows.values())
    if platform.metrics_url is not None:  # Prometheus counters by key name, exported every 1 s
        tokens = wait_until(
            lambda: _key_metric(platform.metrics_url, "key_tokens", name), lambda n: n == spent
        )
        assert tokens == spent

    listed = {k["name"]: k for k in _admin(httpx.get, platform_url, "/keys").json()["data"]}
    assert listed[name]["month_tokens"] == spent

    actors = replica_actors(platform_url)
    gone = _admin(httpx.delete, platform_url, f"/keys/{made.json()['id']}")
    assert gone.status_code == 200, gone.text
    deleted_at = time.monotonic()
    for client in (router, one_hop):
        assert not wait_until(lambda c=client: served(c), lambda ok: not ok, timeout_s=10)
    refused_after_s = time.monotonic() - deleted_at
    print(f"deleted key refused on both paths after {refused_after_s:.1f} s")
    assert refused_after_s <= REVOKED_WITHIN_S
    assert replica_actors(platform_url) == actors  # nothing restarted


def test_v2_inference_uploads_and_speech_are_metered_with_their_media(platform_url):
    """``/v2`` inference, both audio uploads and speech synthesis reach the ledger: its requests,
    and the audio seconds, images and video seconds against what the client sent and got."""
    name = f"media-{uuid.uuid4().hex[:8]}"
    made = _admin(httpx.post, platform_url, "/keys", json={"name": name})
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    client = openai.OpenAI(base_url=f"{platform_url}/v1", api_key=key, max_retries=0, timeout=120)
    http = httpx.Client(base_url=platform_url, headers=auth_headers(key), timeout=120)
    assert wait_until(
        lambda: http.get("/v1/models").status_code, lambda s: s == 200, timeout_s=REVOKED_WITHIN_S
    )

    heard = [audio_file("wav", "pcm_s16le", seconds=s) for s in (2.0, 1.5)]
    client.audio.transcriptions.create(model=WHISPER, file=("a.wav", heard[0]))
    client.audio.translations.create(model=WHISPER, file=("b.wav", heard[1]))
    spoken = client.audio.speech.create(
        model=TTS, input="hello there", voice="alloy", response_format="wav"
    ).content  # wav: every sample the model made, no encoder padding
    png = b64(image_file())
    images = http.post(f"/v2/models/{IMAGES}/infer", json=infer_body([png, png, png]))
    assert images.status_code == 200, images.text
    assert MEDIA_USAGE_HEADER not in images.headers  # the ledger's, not the client's
    clip = video_file(frames=16, fps=8)
    video = http.post(f"/v2/models/{VIDEO}/infer", json=infer_body([b64(clip)], "video"))
    assert video.status_code == 200, video.text

    def ledger() -> dict:
        rows = _usage(platform_url, key=name, group_by="model,endpoint")
        return {(r["model"], r["endpoint"]): r for r in rows}

    v2 = "/v2/models/{name}/infer"
    rows = wait_until(ledger, lambda r: len(r) == 5, timeout_s=10)
    transcribed = rows[(WHISPER, "/v1/audio/transcriptions")]
    translated = rows[(WHISPER, "/v1/audio/translations")]
    assert (transcribed["requests"], translated["requests"]) == (1, 1)
    assert transcribed["audio_in_s"] == pytest.approx(duration_s(heard[0]), abs=1e-6)
    assert translated["audio_in_s"] == pytest.approx(duration_s(heard[1]), abs=1e-6)
    speech = rows[(TTS, "/v1/audio/speech")]
    assert speech["requests"] == 1 and speech["audio_out_s"] > 0
    assert speech["audio_out_s"] == pytest.approx(duration_s(spoken), abs=1e-6)
    assert (rows[(IMAGES, v2)]["requests"], rows[(IMAGES, v2)]["images"]) == (1, 3)
    assert rows[(VIDEO, v2)]["requests"] == 1
    assert rows[(VIDEO, v2)]["video_s"] == pytest.approx(container_duration_s(clip), abs=1e-6)
    assert all(r["errors"] == 0 for r in rows.values())
