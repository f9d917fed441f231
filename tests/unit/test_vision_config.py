"""``type: vision`` / ``type: video`` config, the media policy block, and v2 tensor helpers."""

import struct

import pytest

from configs import ConfigError, load_platform_config
from configs.server_models import Capability
from serve.router.errors import APIError
from serve.router.oip import _flatten, _split_binary_bytes


def entry(model_type: str, **engine_kwargs) -> dict:
    return {
        "model_loading_config": {"model_id": "m", "model_source": "org/model", "type": model_type},
        "engine_kwargs": engine_kwargs,
    }


def test_vision_task_aliases_capabilities_and_tensors():
    model = load_platform_config({"models": [entry("vision", task="detection")]}).models[0]
    assert model.capabilities() == [Capability.OBJECT_DETECTION]
    assert model.tensor_metadata()["outputs"] == [
        {"name": "detections", "datatype": "BYTES", "shape": [-1, -1]}
    ]
    assert model.serve_options()["max_ongoing_requests"] == 16 * 16


def test_a_vision_language_model_chats_through_its_own_engine():
    from servers import engine_class

    model = load_platform_config(
        {"models": [entry("vision", task="image-text-to-text", max_new_tokens=512)]}
    ).models[0]
    assert (
        model.capabilities() == [Capability.CHAT] and model.tensor_metadata() is None
    )  # /v1, not /v2
    assert engine_class(model).__name__ == "VisionChatEngine"
    captioner = load_platform_config({"models": [entry("vision", task="image-to-text")]}).models[0]
    assert engine_class(captioner).__name__ == "VisionEngine"


def test_video_defaults():
    model = load_platform_config({"models": [entry("video")]}).models[0]
    assert model.capabilities() == [Capability.VIDEO_CLASSIFICATION]
    assert model.tensor_metadata()["inputs"][0]["name"] == "video"
    assert model.max_upload_bytes() == 100 * 1024 * 1024


@pytest.mark.parametrize(
    "args,path,message",
    [
        ({"models": [entry("vision")]}, "models[0].engine_kwargs.task", "required"),
        (
            {"models": [entry("vision", task="segmentation")]},
            "models[0].engine_kwargs.task",
            "image-classification",
        ),
        (
            {"models": [entry("video", frame_stride=2, fps=4)]},
            "models[0].engine_kwargs",
            "frame_stride or fps",
        ),
        (
            {"models": [entry("vision", task="classification", max_image_pixels=0)]},
            "models[0].engine_kwargs.max_image_pixels",
            "greater than or equal to 1",
        ),
        (
            {
                "models": [entry("video")],
                "media": {"allowed_domains": ["https://img.example.com/"]},
            },
            "media.allowed_domains",
            "not a host name",
        ),
        (
            {"models": [entry("video")], "media": {"allowed_networks": ["10.0.0.0/33"]}},
            "media.allowed_networks[0]",
            "network",
        ),
    ],
)
def test_bad_vision_config_names_the_field(args, path, message):
    with pytest.raises(ConfigError) as info:
        load_platform_config(args)
    text = str(info.value)
    assert path in text and message in text, text


def test_binary_bytes_tensors_split_on_length_prefixes():
    data = b"".join(struct.pack("<I", len(e)) + e for e in (b"abc", b"", b"\xff" * 5))
    assert _split_binary_bytes(data) == [b"abc", b"", b"\xff" * 5]
    for broken in (data[:-1], b"\x01\x00"):
        with pytest.raises(APIError):
            _split_binary_bytes(broken)


def test_json_tensor_data_is_flattened_row_major():
    assert _flatten([["a", "b"], ["c"]]) == ["a", "b", "c"] and _flatten("x") == ["x"]
    with pytest.raises(APIError):
        _flatten(None)
