"""Image and video decoding: formats, limits, frame sampling."""

import pytest

from common.media import FrameSampling, MediaInputError, decode_image, decode_video
from tests.media_files import image_file, video_file


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
