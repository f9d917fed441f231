"""Audio files the tests make themselves, in real containers, with PyAV."""

from __future__ import annotations

import io

import av
import numpy as np


def tone(seconds: float, rate: int = 16000, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def audio_file(
    fmt: str, codec: str, rate: int = 16000, seconds: float = 1.0, channels: int = 1
) -> bytes:
    """``seconds`` of a tone encoded with ``codec`` in the ``fmt`` container."""
    layout = "stereo" if channels == 2 else "mono"
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(
            np.tile(tone(seconds, rate), (channels, 1)), format="fltp", layout=layout
        )
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=stream.format.name, layout=layout, rate=rate)
        for out in resampler.resample(frame) + resampler.resample(None):
            out.pts = None
            for packet in stream.encode(out):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


# name -> (container, codec, file name) for the upload formats OpenAI lists
UPLOAD_FORMATS = {
    "wav": ("wav", "pcm_s16le", "a.wav"),
    "flac": ("flac", "flac", "a.flac"),
    "mp3": ("mp3", "libmp3lame", "a.mp3"),
    "ogg-opus": ("ogg", "libopus", "a.ogg"),
    "webm-opus": ("webm", "libopus", "a.webm"),
    "m4a-aac": ("ipod", "aac", "a.m4a"),
}


def duration_s(data: bytes) -> float:
    """Decoded length of an encoded file, counted in samples."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples / stream.rate
