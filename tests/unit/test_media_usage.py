"""The usage ledger's media measures: what each engine measures, what each route of the router
records (``/v2`` inference, audio uploads, speech, chat images) with the header taken out of the
client's answer, and the report's new sums beside the old ones."""

import asyncio
import base64
from types import SimpleNamespace

import numpy as np
import pytest
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from router_fakes import CHAT, TENSOR_ROUTES, FakeEngines
from sqlalchemy import create_engine, text

from common.engine_response import EngineResponse
from common.media import FrameSampling, decode_clip
from common.media_usage import MEDIA_USAGE_HEADER, MediaUsage
from common.transcripts import Transcript
from configs.api_keys import APIKey
from configs.server_models import Capability
from serve.router.app import create_router_app
from serve.router.routing import ModelRoute, RouterSettings
from serve.usage.database import MIGRATIONS, open_engine, usage_database
from serve.usage.reports import UsageQuery, as_csv, usage_rows
from servers.audio.speech_to_text import SpeechToText
from servers.audio.text_to_speech import TextToSpeech
from servers.batching import BatchedEngine, Job, TaskRunner
from servers.video_engine import VideoRunner
from servers.vision_engine import VisionRunner
from tests.media_files import image_file, video_file

KEY = APIKey("user-secret-0123456789", "team-a")
ROUTES = {
    **TENSOR_ROUTES,
    "tts": ModelRoute("tts", "audio", "tts-dep", (Capability.SPEECH,)),
}
# what the stand-in engines measured, by capability
MEASURED = {
    Capability.IMAGE_CLASSIFICATION: MediaUsage(images=2),
    Capability.TRANSCRIPTION: MediaUsage(audio_in_s=2.5),
    Capability.SPEECH: MediaUsage(audio_out_s=1.25),
}


def test_the_header_carries_the_measures_and_a_bad_one_counts_nothing():
    measured = MediaUsage(audio_in_s=1.5, images=2)
    assert MediaUsage.of_headers(measured.headers()) == measured
    assert MediaUsage().headers() == {}
    assert measured + measured == MediaUsage(audio_in_s=3.0, images=4)
    for bad in ("not json", "[1]", '{"images": "many"}', '{"images": -3}', None):
        assert MediaUsage.of_header(bad) == MediaUsage()


def test_each_engine_measures_its_media():
    assert SpeechToText(None).measured([], [Transcript("hi", 2.5)]) == MediaUsage(audio_in_s=2.5)
    speech = TextToSpeech(None)
    speech.sampling_rate = 16000
    assert speech.measured([], [np.zeros(24000)]) == MediaUsage(audio_out_s=1.5)
    jobs = [Job(None, None), Job(None, None)]
    assert VisionRunner(None).measured(jobs, []) == MediaUsage(images=2)
    clips = [Job(None, None, extra={"duration_s": 2.0}), Job(None, None, extra={"duration_s": 1.5})]
    assert VideoRunner(None).measured(clips, []) == MediaUsage(video_s=3.5)


def test_a_decoded_clip_knows_its_duration():
    clip = decode_clip(video_file(frames=16, fps=8), FrameSampling(4), max_duration_s=60)
    assert clip.frames.shape[0] == 4 and clip.duration_s == pytest.approx(2.0, abs=0.01)


class _EchoRunner(TaskRunner):
    def load(self, source, device, dtype): ...

    def capabilities(self):
        return [Capability.IMAGE_CLASSIFICATION]

    def prepare(self, capability, body):
        return [Job(None, item) for item in body["inputs"]]

    def run(self, jobs):
        return [job.payload for job in jobs]

    def measured(self, jobs, results):
        return MediaUsage(images=len(jobs))

    def respond(self, jobs, results):
        if "bad" in results:
            return EngineResponse.error(400, "bad input")
        return EngineResponse.json({"outputs": results})


class _EchoEngine(BatchedEngine):
    def create_runner(self):
        return _EchoRunner(None)


def test_a_batched_engine_puts_the_measures_on_answers_that_succeeded_only():
    engine = _EchoEngine(
        SimpleNamespace(model_id="m", engine_kwargs=SimpleNamespace(max_batch_size=8))
    )
    ok, bad = asyncio.run(
        engine.handle_many(
            Capability.IMAGE_CLASSIFICATION, [{"inputs": ["a", "b"]}, {"inputs": ["bad"]}]
        )
    )
    assert MediaUsage.of_headers(ok.headers) == MediaUsage(images=2)
    assert MEDIA_USAGE_HEADER not in (bad.headers or {})


class MeasuringEngines(FakeEngines):
    async def call(self, route, capability, body):
        await super().call(route, capability, body)
        measured = MEASURED.get(capability, MediaUsage())
        if capability is Capability.IMAGE_CLASSIFICATION:
            payload = {
                "outputs": [
                    {"name": "labels", "datatype": "BYTES", "shape": [2, 1], "data": ["cat", "dog"]}
                ]
            }
            return EngineResponse(
                200, EngineResponse.json(payload).content, headers=measured.headers()
            )
        return EngineResponse(200, b'{"text": "hi"}', headers=measured.headers())


@pytest.fixture
def router(tmp_path):
    url = f"sqlite:///{tmp_path}/usage.db"
    settings = RouterSettings(ROUTES, api_keys=(KEY,), usage_database=url)
    yield TestClient(create_router_app(settings, MeasuringEngines())), usage_database(url)
    usage_database(url).close()


def test_v2_uploads_speech_and_chat_images_are_recorded_with_their_media(router):
    client, db = router
    auth = {"Authorization": f"Bearer {KEY.secret}"}
    png = base64.b64encode(image_file(width=8, height=8)).decode()  # under the 1000 B limit
    infer = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": [png, png]}]}
    answers = [
        client.post("/v2/models/vit/infer", json=infer, headers=auth),
        client.post("/v2/models/vit/versions/1/infer", json=infer, headers=auth),
        client.post(
            "/v1/audio/transcriptions",
            data={"model": "asr"},
            files={"file": ("a.wav", b"RIFF....WAVE")},
            headers=auth,
        ),
        client.post("/v1/audio/speech", json={"model": "tts", "input": "hi"}, headers=auth),
    ]
    image_part = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}
    with_images = {**CHAT, "messages": [{"role": "user", "content": [image_part, image_part]}]}
    answers.append(client.post("/v1/chat/completions", json=with_images, headers=auth))
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert MEDIA_USAGE_HEADER not in answer.headers  # the ledger's, not the client's
    refused = client.post("/v2/models/vit/infer", json=infer)  # no key: recorded as an error
    assert refused.status_code == 401
    db.ledger.flush()
    rows = usage_rows(db.engine, UsageQuery(group_by=("key", "model", "endpoint")))
    by_endpoint = {(r["key"], r["model"], r["endpoint"]): r for r in rows}
    infers = by_endpoint[("team-a", "vit", "/v2/models/{name}/infer")]
    assert (infers["requests"], infers["images"], infers["errors"]) == (2, 4, 0)
    upload = by_endpoint[("team-a", "asr", "/v1/audio/transcriptions")]
    assert (upload["requests"], upload["audio_in_s"]) == (1, 2.5)
    speech = by_endpoint[("team-a", "tts", "/v1/audio/speech")]
    assert (speech["requests"], speech["audio_out_s"]) == (1, 1.25)
    chat = by_endpoint[("team-a", "chat", "/v1/chat/completions")]
    assert (chat["requests"], chat["images"]) == (1, 2)
    assert by_endpoint[("", "", "/v2/models/{name}/infer")]["errors"] == 1
    csv = as_csv(usage_rows(db.engine, UsageQuery(group_by=("model",))), ("model",))
    header, *lines = csv.splitlines()
    assert header == (
        "model,requests,errors,prompt_tokens,completion_tokens,total_tokens,latency_s,"
        "audio_in_s,audio_out_s,images,video_s"
    )
    assert any(
        line.startswith("asr,1,0,0,0,0,") and line.endswith(",2.5,0.0,0,0.0") for line in lines
    )


def _migrated(url: str, revision: str, downgrade: bool = False) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with create_engine(url).begin() as connection:
        config.attributes["connection"] = connection
        (command.downgrade if downgrade else command.upgrade)(config, revision)


def test_a_ledger_made_before_the_media_columns_keeps_its_rows_with_none(tmp_path):
    url = f"sqlite:///{tmp_path}/usage.db"
    _migrated(url, "0001")
    with create_engine(url).begin() as connection:
        connection.execute(
            text(
                "INSERT INTO usage_minutes VALUES ('2026-11-03 10:15:00', 'team-a', 'chat', "
                "'/v1/chat/completions', 200, 2, 5, 7, 0.5)"
            )
        )
    (row,) = usage_rows(open_engine(url), UsageQuery())  # opening it upgrades it to 0002
    assert (row["requests"], row["prompt_tokens"], row["total_tokens"]) == (2, 5, 12)
    assert (row["audio_in_s"], row["audio_out_s"], row["images"], row["video_s"]) == (0, 0, 0, 0)
    _migrated(url, "0001", downgrade=True)  # and back: the old columns as they were
    with create_engine(url).connect() as connection:
        assert connection.execute(text("SELECT * FROM usage_minutes")).one()[5:] == (2, 5, 7, 0.5)


def test_a_keys_media_reaches_its_prometheus_counter_by_kind(monkeypatch):
    """Beside the ledger, each answer's media counts in ``platform_key_media`` by key name and
    kind (the ledger's columns); a measure the answer lacks adds no series."""
    from serve.policy import metering

    counted: list[tuple[str, float, dict]] = []

    class Recorded:
        def __getattr__(self, name):
            return SimpleNamespace(inc=lambda value, tags: counted.append((name, value, tags)))

    monkeypatch.setattr(metering, "platform_metrics", Recorded)
    media = MediaUsage(audio_in_s=2.5, images=3)
    tokens = metering.TokenCounts(4, 0)
    metering.record_answer(
        None, KEY, "whisper", "/v1/audio/transcriptions", 200, tokens, 0.1, media
    )
    assert [(v, t) for name, v, t in counted if name == "key_media"] == [
        (2.5, {"key": "team-a", "model": "whisper", "kind": "audio_in_s"}),
        (3, {"key": "team-a", "model": "whisper", "kind": "images"}),
    ]
