"""Engine registry: the config's ``type`` picks one engine class; nothing else branches on type."""

from __future__ import annotations

import importlib

from configs.server_models import BaseModelEntry, ModelType
from configs.vision_models import IMAGE_TEXT_TO_TEXT

# Import paths, so importing the registry does not import every engine's libraries.
ENGINE_CLASSES: dict[ModelType, str] = {
    ModelType.VLLM: "servers.vllm_engine:VLLMEngine",
    ModelType.AUDIO: "servers.audio_engine:AudioEngine",
    ModelType.VISION: "servers.vision_engine:VisionEngine",
    ModelType.VIDEO: "servers.video_engine:VideoEngine",
}


# A task served by another engine than its type's (vision-language chat generates, it does not
# batch).
TASK_ENGINES: dict[tuple[ModelType, str | None], str] = {
    (ModelType.VISION, IMAGE_TEXT_TO_TEXT): "servers.vision_chat_engine:VisionChatEngine",
}


def engine_class(entry: BaseModelEntry):
    model_type = entry.model_loading_config.type
    task = getattr(entry.engine_kwargs, "task", None)
    module, name = TASK_ENGINES.get((model_type, task), ENGINE_CLASSES[model_type]).split(":")
    return getattr(importlib.import_module(module), name)
