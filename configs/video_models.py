"""Config of ``type: video`` models: video classification (VideoMAE-style) over sampled frames."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from common.media import DEFAULT_MAX_FRAME_PIXELS
from configs.server_models import batch_size_description
from configs.vision_models import MediaEngineKwargs, TensorModelEntry


class VideoEngineKwargs(MediaEngineKwargs):
    task: Literal["video-classification"] = Field(
        default="video-classification",
        description="the transformers task; video-classification is the only one",
    )
    max_batch_size: int = Field(
        default=4, ge=1, le=128, description=batch_size_description("clips")
    )
    num_frames: int | None = Field(
        default=None,
        ge=1,
        le=512,
        description="frames per clip; default: the model config's num_frames",
    )
    frame_stride: int = Field(
        default=0, ge=0, description="take every n-th frame; 0: spread over the clip"
    )
    fps: float | None = Field(
        default=None, gt=0, description="sample at this rate instead of a stride"
    )
    max_video_bytes: int = Field(
        default=100 * 1024 * 1024,
        ge=1024,
        description="the largest encoded video, in bytes; past it a 413. The router reads /v2 "
        "bodies to this model up to it (as base64)",
    )
    max_video_duration_s: float = Field(
        default=600.0,
        gt=0,
        description="the longest video accepted, in seconds, read from its container; past "
        "it a 413",
    )
    max_frame_pixels: int = Field(
        default=DEFAULT_MAX_FRAME_PIXELS,
        ge=1,
        description="width x height of a frame, checked before decoding (a small file can hold "
        "frames of gigabytes)",
    )
    max_inputs_per_request: int = Field(
        default=8, ge=1, description="videos one /v2 request may carry; more: a 400"
    )

    @model_validator(mode="after")
    def _stride_or_fps(self) -> VideoEngineKwargs:
        if self.frame_stride and self.fps:
            raise ValueError("set frame_stride or fps, not both")
        return self


class VideoModelEntry(TensorModelEntry):
    engine_kwargs: VideoEngineKwargs = Field(
        default_factory=VideoEngineKwargs,
        description="the video engine's settings: frame sampling, batching and input limits",
    )
    input_name: ClassVar[str] = "video"

    def max_upload_bytes(self) -> int:
        return self.engine_kwargs.max_video_bytes
