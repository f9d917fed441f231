"""Engine registry: the config's ``type`` picks one engine class; nothing else branches on type."""

from __future__ import annotations

import importlib

from configs.server_models import ModelType

# Import paths, so importing the registry does not import every engine's libraries.
ENGINE_CLASSES: dict[ModelType, str] = {
    ModelType.VLLM: "servers.vllm_engine:VLLMEngine",
    ModelType.AUDIO: "servers.audio_engine:AudioEngine",
    ModelType.VISION: "servers.vision_engine:VisionEngine",
    ModelType.VIDEO: "servers.video_engine:VideoEngine",
}


def engine_class(model_type: ModelType):
    module, name = ENGINE_CLASSES[model_type].split(":")
    return getattr(importlib.import_module(module), name)
