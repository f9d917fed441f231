"""The audio endpoints of the real platform: tiny Whisper, Wav2Vec2 (CTC) and VITS models
with random weights, driven with the real openai client and plain multipart HTTP."""

from __future__ import annotations

import asyncio
import re

import numpy as np
import openai
import pytest

from tests.audio_files import UPLOAD_FORMATS, audio_file, duration_s
from tests.integration.helpers import fresh_ready

WHISPER, CTC, TTS = "tiny-whisper", "tiny-ctc", "tiny-tts"
WAV = audio_file("wav", "pcm_s16le", seconds=2.0)


def stats(http, model: str) -> dict:
    return fresh_ready(http.base_url).json()["models"][model]


def assert_transcribes(client) -> None:
    assert isinstance(
        client.audio.transcriptions.create(model=WHISPER, file=("a.wav", WAV)).text, str
    )


@pytest.mark.parametrize("name", sorted(UPLOAD_FORMATS))
def test_every_upload_format_is_decoded_and_resampled(client, name):
    fmt, codec, filename = UPLOAD_FORMATS[name]
    data = audio_file(
        fmt, codec, rate=48000, seconds=3.0, channels=2
    )  # 48 kHz stereo in, 16 kHz mono to the model
    result = client.audio.transcriptions.create(
        model=WHISPER, file=(filename, data), response_format="verbose_json"
    )
    assert abs(result.duration - 3.0) < 0.1
    assert isinstance(result.text, str)


def test_json_text_srt_and_vtt(client):
    as_json = client.audio.transcriptions.create(model=WHISPER, file=("a.wav", WAV))
    assert isinstance(as_json, openai.types.audio.Transcription)
    text = client.audio.transcriptions.create(
        model=WHISPER, file=("a.wav", WAV), response_format="text"
    )
    assert (
        isinstance(text, str) and text.strip() == as_json.text
    )  # greedy decoding: same input, same text
    srt = client.audio.transcriptions.create(
        model=WHISPER, file=("a.wav", WAV), response_format="srt"
    )
    assert re.match(r"1\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n", srt), srt
    vtt = client.audio.transcriptions.create(
        model=WHISPER, file=("a.wav", WAV), response_format="vtt"
    )
    assert re.match(r"WEBVTT\n\n\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}\n", vtt), vtt


def test_verbose_json_has_segments_within_the_audio(client):
    result = client.audio.transcriptions.create(
        model=WHISPER,
        file=("a.wav", WAV),
        response_format="verbose_json",
        language="fr",
        prompt="a conversation",
        temperature=0.3,
    )
    assert result.task == "transcribe" and result.language == "french" and result.duration == 2.0
    assert result.segments, result
    for segment in result.segments:
        assert 0 <= segment.start <= segment.end <= result.duration
        assert segment.temperature == 0.3 and isinstance(segment.tokens, list)


def test_verbose_json_names_the_detected_language(client):
    result = client.audio.transcriptions.create(
        model=WHISPER, file=("a.wav", WAV), response_format="verbose_json"
    )
    assert result.language in {
        "english",
        "french",
        "german",
        "spanish",
    }  # the tiny model's languages


@pytest.mark.parametrize("model", [WHISPER, CTC])
def test_word_and_segment_timestamps(client, model):
    result = client.audio.transcriptions.create(
        model=model,
        file=("a.wav", WAV),
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    assert result.words is not None and result.segments is not None
    for word in result.words:
        assert 0 <= word.start <= word.end <= result.duration


def test_translation_with_the_openai_client(client):
    result = client.audio.translations.create(
        model=WHISPER, file=("a.mp3", audio_file("mp3", "libmp3lame"))
    )
    assert isinstance(result.text, str)
    verbose = client.audio.translations.create(
        model=WHISPER, file=("a.wav", WAV), response_format="verbose_json"
    )
    assert verbose.task == "translate" and verbose.language == "english"


def test_minutes_of_audio_are_transcribed_in_chunks(client, http):
    """90 s of audio: windows of 30 s every 20 s (5 s of overlap on each side) start at 0, 20, 40
    and 60 s."""
    long_mp3 = audio_file("mp3", "libmp3lame", seconds=90)
    before = stats(http, WHISPER)["forward_passes"]
    result = client.audio.transcriptions.create(
        model=WHISPER, file=("long.mp3", long_mp3), response_format="verbose_json"
    )
    assert abs(result.duration - 90) < 0.5
    assert stats(http, WHISPER)["forward_passes"] - before >= 3  # each window one pass
    assert all(s.end <= result.duration for s in result.segments)


async def test_concurrent_requests_share_forward_passes(aclient, http):
    before = stats(http, CTC)
    results = await asyncio.gather(
        *(aclient.audio.transcriptions.create(model=CTC, file=("a.wav", WAV)) for _ in range(12))
    )
    assert len(results) == 12
    after = stats(http, CTC)
    served = after["batched_requests"] - before["batched_requests"]
    passes = after["forward_passes"] - before["forward_passes"]
    assert served == 12
    assert passes < served and after["largest_batch"] > 1, (before, after)


@pytest.mark.parametrize(
    "fmt,media_type",
    [
        ("mp3", "audio/mpeg"),
        ("opus", "audio/ogg"),
        ("aac", "audio/aac"),
        ("flac", "audio/flac"),
        ("wav", "audio/wav"),
        ("pcm", "audio/pcm"),
    ],
)
def test_speech_in_every_format(client, fmt, media_type):
    speech = client.audio.speech.create(
        model=TTS, input="Hello from the platform.", voice="alloy", response_format=fmt
    )
    assert speech.response.headers["content-type"] == media_type
    if fmt == "pcm":
        assert (
            len(speech.content) % 2 == 0 and len(speech.content) > 2400
        )  # 16-bit samples, over 50 ms
    else:
        assert duration_s(speech.content) > 0.05


def test_speed_changes_the_length_of_speech(client):
    def seconds(speed: float) -> float:
        speech = client.audio.speech.create(
            model=TTS,
            input="one two three four five six",
            voice="alloy",
            response_format="wav",
            speed=speed,
        )
        return duration_s(speech.content)

    assert seconds(2.0) < seconds(1.0) < seconds(0.5)


async def test_concurrent_speech_is_batched_and_each_length_is_its_own(aclient, http):
    texts = ["hi", "a longer sentence to speak", "the longest sentence of the three, spoken slowly"]
    before = stats(http, TTS)
    speeches = await asyncio.gather(
        *(
            aclient.audio.speech.create(model=TTS, input=t, voice="echo", response_format="wav")
            for t in texts * 2
        )
    )
    lengths = [duration_s(s.content) for s in speeches]
    after = stats(http, TTS)
    assert lengths[:3] == lengths[3:6] or np.argsort(lengths[:3]).tolist() == [0, 1, 2]
    assert lengths[0] < lengths[2]  # not padded to the batch's longest
    assert after["forward_passes"] - before["forward_passes"] < 6


NOT_AUDIO = b"%PDF-1.4 definitely not audio"
CORRUPT_WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(40)
PLAYLIST = b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n"


@pytest.mark.parametrize(
    "model,file,fields,status,code",
    [
        (WHISPER, ("a.wav", b""), {}, 400, "empty_file"),
        (WHISPER, ("a.pdf", NOT_AUDIO), {}, 400, "unsupported_format"),
        (WHISPER, ("a.m3u8", PLAYLIST), {}, 400, "unsupported_format"),
        (WHISPER, ("a.aiff", audio_file("aiff", "pcm_s16be")), {}, 400, "unsupported_format"),
        (WHISPER, ("a.wav", CORRUPT_WAV), {}, 400, "invalid_audio"),
        (WHISPER, ("a.mp4", b"\x00\x00\x00\x18ftypisom" + bytes(200)), {}, 400, "invalid_audio"),
        (CTC, ("big.wav", audio_file("wav", "pcm_s16le", seconds=40)), {}, 413, "file_too_large"),
        (
            CTC,
            ("long.flac", audio_file("flac", "flac", rate=8000, seconds=90)),
            {},
            413,
            "audio_too_long",
        ),
        (WHISPER, ("a.wav", WAV), {"response_format": "docx"}, 400, None),
        (WHISPER, ("a.wav", WAV), {"language": "klingon"}, 400, None),
        (
            WHISPER,
            ("a.wav", WAV),
            {"language": "zu"},
            400,
            None,
        ),  # a code this model has no token for
        (
            WHISPER,
            ("a.wav", WAV),
            {"timestamp_granularities[]": "word"},
            400,
            None,
        ),  # needs verbose_json
        (WHISPER, ("a.wav", WAV), {"temperature": "hot"}, 400, None),
    ],
)
def test_bad_uploads_get_a_4xx_and_the_server_keeps_serving(
    client, http, model, file, fields, status, code
):
    response = http.post(
        "/v1/audio/transcriptions", data={"model": model, **fields}, files={"file": file}
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and (code is None or error["code"] == code), error
    assert_transcribes(client)


def test_missing_file_and_non_multipart_bodies(client, http):
    no_file = http.post(
        "/v1/audio/transcriptions", files={"model": (None, WHISPER)}
    )  # multipart, no file
    assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "file"
    as_json = http.post("/v1/audio/transcriptions", json={"model": WHISPER, "file": "a.wav"})
    assert as_json.status_code == 400 and "multipart" in as_json.json()["error"]["message"]
    assert_transcribes(client)


@pytest.mark.parametrize(
    "body,param",
    [
        ({"input": "", "voice": "alloy"}, "input"),
        ({"input": "x" * 5000, "voice": "alloy"}, "input"),
        ({"input": "hi", "voice": "alloy", "response_format": "ogg"}, "response_format"),
        ({"input": "hi", "voice": "alloy", "speed": 5}, "speed"),
        ({"input": "hi"}, "voice"),
        (
            {"input": "日本語", "voice": "alloy"},
            "input",
        ),  # nothing this character vocabulary can speak
    ],
)
def test_bad_speech_requests_get_a_400(client, http, body, param):
    response = http.post("/v1/audio/speech", json={"model": TTS, **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert client.audio.speech.create(model=TTS, input="still here", voice="alloy").content


def test_audio_endpoints_refuse_models_of_other_kinds(client):
    with pytest.raises(openai.BadRequestError, match="cannot serve audio.transcriptions"):
        client.audio.transcriptions.create(model="tiny-chat", file=("a.wav", WAV))
    with pytest.raises(openai.BadRequestError, match="cannot serve audio.translations"):
        client.audio.translations.create(model=CTC, file=("a.wav", WAV))
    with pytest.raises(openai.BadRequestError, match="cannot serve audio.speech"):
        client.audio.speech.create(model=WHISPER, input="hi", voice="alloy")
    with pytest.raises(openai.BadRequestError, match="cannot serve chat"):
        client.chat.completions.create(model=TTS, messages=[{"role": "user", "content": "hi"}])
