"""Image and video decoding: formats, limits, frame sampling."""

import pytest

from common.media import (
    FrameBudget,
    FrameSampling,
    MediaInputError,
    decode_image,
    decode_video,
)
from tests.media_files import growing_video_file, image_file, video_file


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_supported_image_formats_decode_to_rgb(fmt):
    image = decode_image(image_file(fmt, 40, 30), max_pixels=10_000)
    assert image.mode == "RGB" and image.size == (40, 30)


@pytest.mark.parametrize(
    "data,code,status",
    [
        (b"", "empty_input", 400),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "unsupported_format", 400),
        (image_file("TIFF"), "unsupported_format", 400),
        (image_file("PNG")[:60], "invalid_image", 400),
        (image_file("PNG", 200, 100), "image_too_large", 413),
    ],
)
def test_unusable_images_are_refused(data, code, status):
    with pytest.raises(MediaInputError) as info:
        decode_image(data, max_pixels=10_000)
    assert (info.value.code, info.value.status_code) == (code, status)


@pytest.mark.parametrize(
    "fmt,codec", [("mp4", "libx264"), ("webm", "libvpx-vp9"), ("avi", "mpeg4")]
)
def test_videos_are_sampled_to_the_frames_the_model_needs(fmt, codec):
    frames = decode_video(video_file(fmt, codec, frames=16), FrameSampling(4), max_duration_s=60)
    assert frames.shape == (4, 48, 64, 3) and frames.dtype.name == "uint8"


def test_short_clips_repeat_their_last_frame_and_stride_and_fps_pick_frames():
    assert decode_video(video_file(frames=2), FrameSampling(4), 60).shape[0] == 4
    assert decode_video(video_file(frames=16), FrameSampling(4, stride=3), 60).shape[0] == 4
    assert decode_video(video_file(frames=16, fps=8), FrameSampling(4, fps=4), 60).shape[0] == 4


@pytest.mark.parametrize(
    "data,code,status",
    [
        (b"", "empty_input", 400),
        (image_file("PNG"), "unsupported_format", 400),
        (b"\x00\x00\x00\x18ftypisom" + bytes(100), "invalid_video", 400),
        (video_file(frames=40, fps=8), "video_too_long", 413),
    ],
)
def test_unusable_videos_are_refused(data, code, status):
    with pytest.raises(MediaInputError) as info:
        decode_video(data, FrameSampling(4), max_duration_s=2)
    assert (info.value.code, info.value.status_code) == (code, status)


def test_frames_above_the_pixel_cap_are_refused_from_the_header_before_decoding(monkeypatch):
    # the threat: a few KB of VP9 whose 16384x16384 frames decode to 800 MB each; here 1024x1024
    # against a cap of half that
    big = video_file(frames=2, width=1024, height=1024)
    decoded = []
    monkeypatch.setattr(FrameBudget, "decode", lambda *args: decoded.append(1) or [])
    with pytest.raises(MediaInputError) as info:
        decode_video(big, FrameSampling(2), max_duration_s=60, max_frame_pixels=500_000)
    assert (info.value.code, info.value.status_code) == ("video_too_large", 413)
    assert "1024x1024" in info.value.message and decoded == []
    monkeypatch.undo()
    assert decode_video(big, FrameSampling(2), 60, max_frame_pixels=1024 * 1024).shape[0] == 2


def test_sampled_frames_are_scaled_to_the_models_input_as_they_are_converted():
    clip = video_file(frames=4, width=640, height=480)
    frames = decode_video(clip, FrameSampling(2, shortest_edge=224), max_duration_s=60)
    assert frames.shape == (2, 224, 298, 3)
    small = decode_video(video_file(frames=4), FrameSampling(2, shortest_edge=224), 60)
    assert small.shape == (2, 48, 64, 3)  # never scaled up


def test_a_claimed_frame_rate_buys_no_frames_beyond_what_the_duration_limit_allows():
    # 500 frames that claim a million a second: half a millisecond of "video"; a second's limit
    # is worth at most MAX_REAL_FPS frames to decode, not a million
    fast = video_file(frames=500, fps=1_000_000)
    with pytest.raises(MediaInputError) as info:
        decode_video(fast, FrameSampling(4, stride=200), max_duration_s=1)
    assert (info.value.code, info.value.status_code) == ("video_too_long", 413)


def test_a_decoded_frame_larger_than_the_first_is_refused_before_it_is_converted():
    # the header says 64x48; the third frame is 320x240
    clip = growing_video_file("mp4", "libx264")
    with pytest.raises(MediaInputError) as info:
        decode_video(clip, FrameSampling(3), max_duration_s=60, max_frame_pixels=64 * 48)
    assert (info.value.code, info.value.status_code) == ("video_too_large", 413)
    assert info.value.message == "the video's frames are 320x240 pixels; the limit is 3072"
