"""Transcript rendering in OpenAI's response formats."""

import json

import pytest

from common.transcripts import Segment, Transcript, render

TRANSCRIPT = Transcript(
    text="hello there. general kenobi",
    duration=3725.5,
    language="english",
    segments=[Segment(0.0, 1.25, " hello there."), Segment(3601.5, 3725.5, " general kenobi")],
    words=[Segment(0.0, 0.5, "hello"), Segment(0.6, 1.25, "there.")],
)


def test_json_and_text():
    assert json.loads(render(TRANSCRIPT, "json", "transcribe")[0]) == {"text": TRANSCRIPT.text}
    body, media_type = render(TRANSCRIPT, "text", "transcribe")
    assert body.decode() == TRANSCRIPT.text + "\n" and media_type.startswith("text/plain")


def test_srt_numbers_cues_with_comma_milliseconds():
    text = render(TRANSCRIPT, "srt", "transcribe")[0].decode()
    assert text.splitlines()[:4] == ["1", "00:00:00,000 --> 00:00:01,250", "hello there.", ""]
    assert "2\n01:00:01,500 --> 01:02:05,500\ngeneral kenobi\n" in text


def test_vtt_has_header_and_dot_milliseconds():
    body, media_type = render(TRANSCRIPT, "vtt", "transcribe")
    lines = body.decode().splitlines()
    assert lines[:4] == ["WEBVTT", "", "00:00:00.000 --> 00:00:01.250", "hello there."]
    assert media_type.startswith("text/vtt")


def test_subtitles_without_segments_use_one_cue_for_the_whole_audio():
    bare = Transcript(text="abc", duration=2.0)
    assert "00:00:00,000 --> 00:00:02,000\nabc" in render(bare, "srt", "transcribe")[0].decode()


def test_verbose_json_has_segments_words_and_tokens():
    body = json.loads(
        render(TRANSCRIPT, "verbose_json", "translate", 0.2, tokenize=lambda t: [len(t)])[0]
    )
    assert (
        body["task"] == "translate" and body["language"] == "english" and body["duration"] == 3725.5
    )
    assert [s["id"] for s in body["segments"]] == [0, 1]
    assert body["segments"][1] | {"compression_ratio": 0} == {
        "id": 1,
        "seek": 0,
        "start": 3601.5,
        "end": 3725.5,
        "text": " general kenobi",
        "tokens": [15],
        "temperature": 0.2,
        "compression_ratio": 0,
    }
    assert body["words"] == [
        {"word": "hello", "start": 0.0, "end": 0.5},
        {"word": "there.", "start": 0.6, "end": 1.25},
    ]


def test_unknown_format_is_refused():
    with pytest.raises(ValueError):
        render(TRANSCRIPT, "xml", "transcribe")
