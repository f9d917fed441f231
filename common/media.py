"""Decode images (Pillow) and videos (PyAV, no torchvision/torchcodec) for vision engines,
with limits checked before the expensive work: pixel counts from the header (decompression
bombs), duration from the container, frames sampled rather than decoded whole."""

from __future__ import annotations

import io
import time
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
            _check_image_pixels(*image.size, max_pixels)
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
    # the model's input: each sampled frame is scaled while it is converted to RGB so that its
    # shorter side is this many pixels (never up), not converted at full size and resized after
    shortest_edge: int | None = None


# No real video runs faster than this: the budget of frames a duration limit allows, whatever
# frame rate a container claims (a sender's 1000000 fps would otherwise buy a million frames).
MAX_REAL_FPS = 240.0
DEFAULT_MAX_FRAME_PIXELS = 4096 * 2160  # a 4K frame


@dataclass(frozen=True)
class Clip:
    """The frames a model sees of a video, and the video's length (for the usage ledger)."""

    frames: np.ndarray  # (num_frames, height, width, 3) uint8 RGB
    duration_s: float  # the container's; else up to the last frame decoded (a lower bound)


def decode_video(
    data: bytes,
    sampling: FrameSampling,
    max_duration_s: float,
    max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS,
) -> np.ndarray:
    """``(num_frames, height, width, 3)`` uint8 RGB frames sampled from an encoded video."""
    return decode_clip(data, sampling, max_duration_s, max_frame_pixels).frames


def decode_clip(
    data: bytes,
    sampling: FrameSampling,
    max_duration_s: float,
    max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS,
) -> Clip:
    """Frames sampled from an encoded video, and its duration. A frame of more than
    ``max_frame_pixels`` is refused from the stream's header, before any decoding, and again for
    each decoded frame (a stream may change its size)."""
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
            _check_pixels(stream.codec_context.width, stream.codec_context.height, max_frame_pixels)
            rate = min(float(stream.average_rate or stream.guessed_rate or 25), MAX_REAL_FPS)
            duration = _duration_s(container, stream)
            if duration is not None and duration > max_duration_s:
                raise MediaInputError(
                    f"the video is {duration:.1f} s; the limit is {max_duration_s:g} s",
                    "video_too_long",
                    413,
                )
            wanted = _frame_indexes(sampling, rate, duration)
            budget = FrameBudget(max_duration_s, max_frame_pixels, sampling.shortest_edge)
            frames, decoded = budget.decode(container, stream, wanted)
    except MediaInputError:
        raise
    except (av.FFmpegError, ValueError, IndexError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise MediaInputError(
            f"the {kind} video could not be decoded: {reason}", "invalid_video"
        ) from None
    if not frames:
        raise MediaInputError(f"the {kind} video holds no decodable frames", "invalid_video")
    length_s = duration if duration is not None else decoded / rate
    while len(frames) < sampling.num_frames:  # short clips repeat their last frame
        frames.append(frames[-1])
    return Clip(np.stack(frames[: sampling.num_frames]), length_s)


def check_media_pixels(
    kind: str,
    data: bytes,
    max_image_pixels: int,
    max_frame_pixels: int,
    max_video_frames: int,
    max_check_s: float,
) -> None:
    """Refuse an image or a video larger than its pixel cap before an engine decodes it (a few KB
    of PNG or VP9 can claim gigabytes of pixels): an image from its header, a video from its
    streams' headers and then from each frame's size as it is decoded, before anything converts
    it. An image this cannot read is left to the engine, which refuses it itself; a video must be
    in a container this reads, and its frames are checked within ``max_video_frames`` and
    ``max_check_s``."""
    if kind == "image":
        from PIL import Image

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                width, height = Image.open(io.BytesIO(data)).size  # the header; no pixels
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise MediaInputError(
                f"the image claims more pixels than the limit of {max_image_pixels}",
                "image_too_large",
                413,
            ) from None
        except Exception:  # not an image PIL knows: the engine answers for it
            return
        _check_image_pixels(width, height, max_image_pixels)
    elif kind == "video":
        import av

        container = sniff_container(data)
        if container not in VIDEO_CONTAINERS:  # checked here or by no one: vLLM probes any format
            raise MediaInputError(
                f"not a video in a supported container; supported: {', '.join(VIDEO_CONTAINERS)}",
                "unsupported_format",
            )
        budget = FrameCheckBudget(max_video_frames, time.monotonic() + max_check_s)
        try:
            with av.open(io.BytesIO(data), mode="r", format=DEMUXERS[container]) as opened:
                streams = opened.streams.video
                for stream in streams:
                    context = stream.codec_context
                    _check_pixels(context.width, context.height, max_frame_pixels)
                if streams:
                    _check_every_frame(opened, streams, max_frame_pixels, budget)
        except MediaInputError:  # a ValueError too
            raise
        except (av.FFmpegError, ValueError):
            return


@dataclass
class FrameCheckBudget:
    """What checking one video's frames may cost: a number of frames and a deadline (the check
    runs in a thread, where the request's timeout cannot stop it). A few MB of near-static frames
    are tens of thousands of frames to decode."""

    frames: int
    deadline: float  # time.monotonic()

    def spend(self) -> None:
        self.frames -= 1
        if self.frames < 0:
            raise MediaInputError(
                "the video has more frames than the platform checks (media.max_video_frames); "
                "send a shorter clip or fewer frames per second",
                "video_too_long",
                413,
            )
        if time.monotonic() > self.deadline:
            raise MediaInputError(
                "the video took too long to check (media.max_video_check_s); send a shorter "
                "or smaller clip",
                "video_too_long",
                413,
            )


def _check_every_frame(container, streams, max_pixels: int, budget: FrameCheckBudget) -> None:
    """Each frame of ``streams`` within ``max_pixels``, read from the decoded frame before any
    conversion: a stream may grow at any frame (a small first frame in the header, a huge one
    later), and the engine converts every frame it samples at its full size. A packet that does
    not decode is skipped, as decoders skip it, so a broken packet cannot hide the frames after
    it; each packet spends the budget, decoded or not."""
    import av

    for packet in container.demux(*streams):
        if packet.size:  # not the empty packet that flushes the decoder at the end
            budget.spend()
        try:
            frames = packet.decode()
        except av.FFmpegError:
            continue
        for frame in frames:
            _check_pixels(frame.width, frame.height, max_pixels)


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


def _check_image_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise MediaInputError(
            f"the image is {width}x{height} pixels; the limit is {max_pixels}",
            "image_too_large",
            413,
        )


def _check_pixels(width: int | None, height: int | None, max_pixels: int) -> None:
    if width and height and width * height > max_pixels:
        raise MediaInputError(
            f"the video's frames are {width}x{height} pixels; the limit is {max_pixels}",
            "video_too_large",
            413,
        )


@dataclass(frozen=True)
class FrameBudget:
    """What decoding one video may cost: frames until the duration limit, by their timestamps and
    at most ``MAX_REAL_FPS`` of them a second, each of at most ``max_pixels``."""

    max_duration_s: float
    max_pixels: int
    shortest_edge: int | None = None

    def decode(self, container, stream, wanted: list[int]) -> tuple[list[np.ndarray], int]:
        """The ``wanted`` frames, and how many frames were decoded to reach them."""
        wanted_set, last = set(wanted), wanted[-1]
        max_frames = int(self.max_duration_s * MAX_REAL_FPS)
        frames: list[np.ndarray] = []
        decoded = 0
        for index, frame in enumerate(container.decode(stream)):
            decoded = index + 1
            if index > max_frames or (frame.time is not None and frame.time > self.max_duration_s):
                raise MediaInputError(
                    "the video is longer than the duration limit", "video_too_long", 413
                )
            _check_pixels(frame.width, frame.height, self.max_pixels)
            if index in wanted_set:
                frames.append(frame.to_ndarray(format="rgb24", **self._scaled(frame)))
            if index >= last:
                break
        return frames, decoded

    def _scaled(self, frame) -> dict[str, int]:
        """The frame's size with its shorter side at ``shortest_edge`` (even sizes; never up)."""
        shorter = min(frame.width, frame.height)
        if not self.shortest_edge or shorter <= self.shortest_edge:
            return {}
        scale = self.shortest_edge / shorter
        return {
            "width": max(2, round(frame.width * scale / 2) * 2),
            "height": max(2, round(frame.height * scale / 2) * 2),
        }
