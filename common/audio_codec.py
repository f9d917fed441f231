"""Decode uploaded audio and encode synthesized audio with PyAV (FFmpeg's libraries, no
torchaudio, no ffmpeg binary).

Uploads are opened with the one demuxer their first bytes name (``common/containers.py``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from common.containers import DEMUXERS, sniff_container
from common.input_errors import InputError

# Demuxer per container, in the order tried; each is picked by its magic bytes only.
SUPPORTED_CONTAINERS = ("wav", "flac", "mp3", "aac", "ogg", "webm", "mp4")


class AudioInputError(InputError):
    """An upload that cannot be used; ``status_code`` is 400, or 413 for limits."""

    def __init__(self, message: str, code: str, status_code: int = 400):
        super().__init__(message, code, status_code, param="file")


def decode_audio(data: bytes, sampling_rate: int, max_duration_s: float) -> np.ndarray:
    """Mono float32 samples at ``sampling_rate`` from an uploaded file.

    The duration limit is enforced while decoding, so a small file that expands to hours
    of audio is stopped at the limit rather than decoded whole.
    """
    import av

    if not data:
        raise AudioInputError("the uploaded file is empty", "empty_file")
    container_kind = sniff_container(data)
    if container_kind not in SUPPORTED_CONTAINERS:
        raise AudioInputError(
            "the file is not audio in a supported format; "
            f"supported: {', '.join(SUPPORTED_CONTAINERS)}",
            "unsupported_format",
        )
    max_samples = int(max_duration_s * sampling_rate)
    pieces: list[np.ndarray] = []
    total = 0
    try:
        with av.open(io.BytesIO(data), mode="r", format=DEMUXERS[container_kind]) as container:
            if not container.streams.audio:
                raise AudioInputError(
                    f"the {container_kind} file has no audio stream", "no_audio_stream"
                )
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sampling_rate)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    pieces.append(out.to_ndarray().reshape(-1))
                    total += out.samples
                if total > max_samples:
                    raise AudioInputError(
                        f"the audio is longer than the limit of {max_duration_s:g} s",
                        "audio_too_long",
                        413,
                    )
            for out in resampler.resample(None):
                pieces.append(out.to_ndarray().reshape(-1))
    except AudioInputError:
        raise
    except (av.FFmpegError, ValueError, IndexError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise AudioInputError(
            f"the {container_kind} file could not be decoded: {reason}", "invalid_audio"
        ) from None
    if not pieces or total == 0:
        raise AudioInputError(f"the {container_kind} file holds no audio samples", "invalid_audio")
    return np.concatenate(pieces).astype(np.float32, copy=False)


@dataclass(frozen=True)
class OutputFormat:
    container: str | None  # None: raw samples, no container
    codec: str
    sample_format: str
    media_type: str
    rates: tuple[int, ...] = ()  # the rates the codec accepts; () = any


# OpenAI's speech formats. pcm is raw 24 kHz signed 16-bit little-endian, as OpenAI sends it.
OUTPUT_FORMATS = {
    "wav": OutputFormat("wav", "pcm_s16le", "s16", "audio/wav"),
    "flac": OutputFormat("flac", "flac", "s16", "audio/flac"),
    "mp3": OutputFormat(
        "mp3", "libmp3lame", "fltp", "audio/mpeg", (8000, 16000, 22050, 24000, 32000, 44100, 48000)
    ),
    "opus": OutputFormat("ogg", "libopus", "flt", "audio/ogg", (8000, 12000, 16000, 24000, 48000)),
    "aac": OutputFormat(
        "adts", "aac", "fltp", "audio/aac", (16000, 22050, 24000, 32000, 44100, 48000)
    ),
    "pcm": OutputFormat(None, "pcm_s16le", "s16", "audio/pcm", (24000,)),
}


def encode_audio(samples: np.ndarray, sampling_rate: int, fmt: str) -> tuple[bytes, str]:
    """Encode mono float samples in [-1, 1] as ``fmt``; returns the bytes and the media type."""
    import av

    spec = OUTPUT_FORMATS[fmt]
    rate = (
        sampling_rate
        if not spec.rates or sampling_rate in spec.rates
        else _nearest_rate_above(sampling_rate, spec.rates)
    )
    frame = _frame(np.clip(samples, -1.0, 1.0), sampling_rate)
    resampler = av.AudioResampler(format=spec.sample_format, layout="mono", rate=rate)
    frames = resampler.resample(frame) + resampler.resample(None)
    if spec.container is None:
        return b"".join(bytes(f.planes[0])[: f.samples * 2] for f in frames), spec.media_type
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=spec.container) as container:
        stream = container.add_stream(spec.codec, rate=rate, layout="mono")
        assert isinstance(stream, av.AudioStream)  # an audio codec gives an audio stream
        for out in frames:
            out.pts = None
            for packet in stream.encode(out):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue(), spec.media_type


def change_tempo(samples: np.ndarray, sampling_rate: int, speed: float) -> np.ndarray:
    """Play ``samples`` ``speed`` times faster without changing pitch (FFmpeg's atempo)."""
    import av

    if speed == 1.0:
        return samples
    factors = []  # atempo takes 0.5 to 100: slower speeds chain several
    while speed < 0.5:
        factors.append(0.5)
        speed /= 0.5
    factors.append(speed)
    graph = av.filter.Graph()
    node = graph.add_abuffer(format="flt", sample_rate=sampling_rate, layout="mono")
    for factor in factors:
        tempo = graph.add("atempo", f"{factor}")
        node.link_to(tempo)
        node = tempo
    node.link_to(graph.add("abuffersink"))
    graph.configure()
    graph.push(_frame(samples, sampling_rate))
    graph.push(None)
    out: list[np.ndarray] = []
    while True:
        try:
            out.append(graph.pull().to_ndarray().reshape(-1))
        except (av.BlockingIOError, av.EOFError):
            break
    return np.concatenate(out) if out else samples[:0]


def _frame(samples: np.ndarray, sampling_rate: int):
    import av

    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(samples, dtype=np.float32).reshape(1, -1), format="flt", layout="mono"
    )
    frame.sample_rate = sampling_rate
    frame.pts = 0
    return frame


def _nearest_rate_above(rate: int, allowed: tuple[int, ...]) -> int:
    return min((r for r in allowed if r >= rate), default=max(allowed))
