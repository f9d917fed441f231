"""Images (Pillow) and videos (PyAV) the tests make themselves."""

from __future__ import annotations

import base64
import io
from fractions import Fraction

import av
import numpy as np
from PIL import Image


def image_file(fmt: str = "PNG", width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    pixels = (np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def video_file(
    fmt: str = "mp4",
    codec: str = "libx264",
    frames: int = 16,
    fps: int = 8,
    width: int = 64,
    height: int = 48,
) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        rng = np.random.RandomState(0)
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(
                (rng.rand(height, width, 3) * 255).astype("uint8"), format="rgb24"
            )
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def growing_video_file(
    fmt: str = "webm",
    codec: str = "libvpx",
    first: tuple[int, int] = (64, 48),
    later: tuple[int, int] = (320, 240),
) -> bytes:
    """One video stream whose header (and first two frames) say ``first`` and whose third frame
    is ``later`` (width, height): two encodings' packets muxed as one stream, as a sender may
    craft it to pass a check of the header alone."""
    small, extradata = _encoded(codec, *first, frames=2)
    large, _ = _encoded(codec, *later, frames=1)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=8)
        stream.width, stream.height, stream.pix_fmt = first[0], first[1], "yuv420p"
        stream.codec_context.extradata = extradata
        for index, packet in enumerate(small + large):
            packet.stream, packet.pts, packet.dts = stream, index, index
            packet.time_base = Fraction(1, 8)
            container.mux(packet)
    return buffer.getvalue()


def _encoded(codec: str, width: int, height: int, frames: int) -> tuple[list, bytes | None]:
    """The packets of ``frames`` frames of noise, encoded alone, and the encoder's extradata
    (H.264's parameter sets are then repeated in band, so a later size reaches the decoder)."""
    encoder = av.CodecContext.create(codec, "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base, encoder.framerate = Fraction(1, 8), Fraction(8)
    if codec == "libx264":
        encoder.options = {"x264-params": "repeat-headers=1"}
    encoder.open()
    rng = np.random.RandomState(0)
    packets = []
    for index in range(frames):
        pixels = (rng.rand(height, width, 3) * 255).astype("uint8")
        frame = av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(format="yuv420p")
        frame.pts = index
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    return packets, encoder.extradata


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def infer_body(
    elements: list,
    input_name: str = "image",
    datatype: str = "BYTES",
    shape: list[int] | None = None,
    **extra,
) -> dict:
    """An Open Inference Protocol request with one input, by default of (base64 or URL) strings."""
    tensor = {
        "name": input_name,
        "shape": shape or [len(elements)],
        "datatype": datatype,
        "data": elements,
    }
    return {"inputs": [tensor], **extra}
