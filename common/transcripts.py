"""Render a transcription in OpenAI's ``response_format``s: json, text, srt, vtt, verbose_json."""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

TranscriptFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]


@dataclass
class Segment:
    start: float
    end: float
    text: str


@dataclass
class Transcript:
    """What an engine recognised in one upload; times in seconds from its start."""

    text: str
    duration: float
    language: str | None = None
    segments: list[Segment] = field(default_factory=list)
    words: list[Segment] | None = None


def render(
    transcript: Transcript, response_format: str, task: str, temperature: float = 0.0, tokenize=None
) -> tuple[bytes, str]:
    """The response body and its media type. ``tokenize`` maps text to token ids (verbose_json)."""
    if response_format == "json":
        return _json({"text": transcript.text}), "application/json"
    if response_format == "text":
        return (transcript.text + "\n").encode(), "text/plain; charset=utf-8"
    if response_format == "srt":
        return _subtitles(transcript, srt=True).encode(), "text/plain; charset=utf-8"
    if response_format == "vtt":
        return _subtitles(transcript, srt=False).encode(), "text/vtt; charset=utf-8"
    if response_format == "verbose_json":
        return _json(_verbose(transcript, task, temperature, tokenize)), "application/json"
    raise ValueError(f"unknown response_format {response_format!r}")


def _verbose(transcript: Transcript, task: str, temperature: float, tokenize) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": task,
        "language": transcript.language,
        "duration": round(transcript.duration, 3),
        "text": transcript.text,
        "segments": [
            {
                "id": i,
                "seek": 0,
                "start": round(s.start, 3),
                "end": round(s.end, 3),
                "text": s.text,
                "tokens": tokenize(s.text) if tokenize else [],
                "temperature": temperature,
                "compression_ratio": _compression_ratio(s.text),
            }
            for i, s in enumerate(transcript.segments)
        ],
    }
    if transcript.words is not None:
        body["words"] = [
            {"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3)}
            for w in transcript.words
        ]
    return body


def _compression_ratio(text: str) -> float:
    """Whisper's repetition signal: raw bytes over zlib-compressed bytes."""
    raw = text.encode()
    return round(len(raw) / len(zlib.compress(raw)), 3) if raw else 0.0


def _subtitles(transcript: Transcript, srt: bool) -> str:
    cues = transcript.segments or [Segment(0.0, transcript.duration, transcript.text)]
    lines = [] if srt else ["WEBVTT", ""]
    for index, cue in enumerate(cues, start=1):
        if srt:
            lines.append(str(index))
        lines.append(f"{_timestamp(cue.start, srt)} --> {_timestamp(cue.end, srt)}")
        lines += [cue.text.strip(), ""]
    return "\n".join(lines)


def _timestamp(seconds: float, srt: bool) -> str:
    millis = int(round(max(seconds, 0.0) * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{',' if srt else '.'}{millis:03d}"


def _json(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
