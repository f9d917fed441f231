"""Images (Pillow) and videos (PyAV) the tests make themselves."""

from __future__ import annotations

import base64
import io

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
