"""Decode images (Pillow) and videos (PyAV, no torchvision/torchcodec) for vision engines,
with limits checked before the expensive work: pixel counts from the header (decompression
bombs), duration from the container, frames sampled rather than decoded whole."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np

from common.containers import DEMUXERS, sniff_container
from common.input_errors import InputError

IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
VIDEO_CONTAINERS = ("mp4", "webm", "avi", "ogg")


class MediaInputError(InputError):
    """Media that cannot be used; ``status_code`` is 400, or 413 for limits."""

    def __init__(self, message: str, code: str, status_code: int = 400):
        super().__init__(message, code, status_code, param="inputs")


def decode_image(data: bytes, max_pixels: int):
    """An RGB ``PIL.Image`` from encoded bytes, refusing more than ``max_pixels``."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise MediaInputError("the image is empty", "empty_input")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise MediaInputError(
                    f"the image is {width}x{height} pixels; the limit is {max_pixels}",
                    "image_too_large",
                    413,
                )
            image.load()
    except MediaInputError:
        raise
    except UnidentifiedImageError:
        raise MediaInputError(
            f"not an image in a supported format; supported: {', '.join(IMAGE_FORMATS)}",
            "unsupported_format",
        ) from None
    except (
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise MediaInputError(f"the image could not be decoded: {exc}", "invalid_image") from None
    return image.convert("RGB")


@dataclass(frozen=True)
class FrameSampling:
    """Which frames a video model sees: ``num_frames`` spaced ``stride`` frames apart, or at
    ``fps`` frames per second when set, from the start, covering the clip uniformly when
    ``stride`` is 0."""

    num_frames: int
    stride: int = 0
    fps: float | None = None


def decode_video(data: bytes, sampling: FrameSampling, max_duration_s: float) -> np.ndarray:
    """``(num_frames, height, width, 3)`` uint8 RGB frames sampled from an encoded video."""
    import av

    if not data:
        raise MediaInputError("the video is empty", "empty_input")
    kind = sniff_container(data)
    if kind not in VIDEO_CONTAINERS:
        raise MediaInputError(
            f"not a video in a supported container; supported: {', '.join(VIDEO_CONTAINERS)}",
            "unsupported_format",
        )
    try:
        with av.open(io.BytesIO(data), mode="r", format=DEMUXERS[kind]) as container:
            if not container.streams.video:
                raise MediaInputError(f"the {kind} file has no video stream", "no_video_stream")
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            duration = _duration_s(container, stream)
            if duration is not None and duration > max_duration_s:
                raise MediaInputError(
                    f"the video is {duration:.1f} s; the limit is {max_duration_s:g} s",
                    "video_too_long",
                    413,
                )
            wanted = _frame_indexes(sampling, rate, duration)
            frames = _decode_frames(container, stream, wanted, int(max_duration_s * rate))
    except MediaInputError:
        raise
    except (av.FFmpegError, ValueError, IndexError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise MediaInputError(
            f"the {kind} video could not be decoded: {reason}", "invalid_video"
        ) from None
    if not frames:
        raise MediaInputError(f"the {kind} video holds no decodable frames", "invalid_video")
    while len(frames) < sampling.num_frames:  # short clips repeat their last frame
        frames.append(frames[-1])
    return np.stack(frames[: sampling.num_frames])


def _duration_s(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000
    return None


def _frame_indexes(sampling: FrameSampling, rate: float, duration: float | None) -> list[int]:
    if sampling.fps:
        step = max(1, round(rate / sampling.fps))
    elif sampling.stride:
        step = sampling.stride
    else:  # spread over the whole clip
        total = int((duration or 0) * rate)
        step = max(1, total // sampling.num_frames) if total else 1
    return [i * step for i in range(sampling.num_frames)]


def _decode_frames(container, stream, wanted: list[int], max_frames: int) -> list[np.ndarray]:
    wanted_set, last = set(wanted), wanted[-1]
    frames = []
    for index, frame in enumerate(container.decode(stream)):
        if index > max_frames:
            raise MediaInputError(
                "the video is longer than the duration limit", "video_too_long", 413
            )
        if index in wanted_set:
            frames.append(frame.to_ndarray(format="rgb24"))
        if index >= last:
            break
    return frames
