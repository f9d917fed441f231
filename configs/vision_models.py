"""Config of ``type: vision`` models (transformers image models) and the tensors they take and
give through the Open Inference Protocol."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from configs.server_models import Capability, TransformersEngineKwargs, TransformersModelEntry

VISION_TASKS = (
    Capability.IMAGE_CLASSIFICATION,
    Capability.ZERO_SHOT_IMAGE_CLASSIFICATION,
    Capability.OBJECT_DETECTION,
    Capability.IMAGE_TO_TEXT,
    Capability.IMAGE_EMBEDDING,
)
# Vision-language chat (LLaVA, Idefics3, Qwen2-VL, ...): served on /v1/chat/completions, not /v2.
IMAGE_TEXT_TO_TEXT = "image-text-to-text"
CHAT_ONGOING_REQUESTS = 4
_TASK_ALIASES = {
    "image-embedding": "image-feature-extraction",
    "image-captioning": "image-to-text",
    "zero-shot": "zero-shot-image-classification",
    "detection": "object-detection",
    "classification": "image-classification",
}

# Output tensors per task: name -> datatype. Labels and scores are [batch, top_k]; detections
# and captions one JSON or text element per input; embeddings [batch, dim].
OUTPUT_TENSORS: dict[Capability, dict[str, str]] = {
    Capability.IMAGE_CLASSIFICATION: {"labels": "BYTES", "scores": "FP32"},
    Capability.ZERO_SHOT_IMAGE_CLASSIFICATION: {"labels": "BYTES", "scores": "FP32"},
    Capability.OBJECT_DETECTION: {"detections": "BYTES"},
    Capability.IMAGE_TO_TEXT: {"captions": "BYTES"},
    Capability.IMAGE_EMBEDDING: {"embeddings": "FP32"},
    Capability.VIDEO_CLASSIFICATION: {"labels": "BYTES", "scores": "FP32"},
}


class MediaEngineKwargs(TransformersEngineKwargs):
    top_k: int = Field(
        default=5, ge=1, le=1000, description="labels returned per input (classification)"
    )
    # each kind of media model narrows it to its own tasks
    task: str = Field(description="the transformers task the model runs")


class VisionEngineKwargs(MediaEngineKwargs):
    # pydantic reads the task names from the table at runtime; mypy cannot evaluate the Literal
    task: Literal[tuple(t.value for t in VISION_TASKS) + (IMAGE_TEXT_TO_TEXT,)] = Field(  # type: ignore[valid-type]
        description="the transformers task"
    )
    max_image_pixels: int = Field(
        default=25_000_000, ge=1, description="width x height; larger images are a 413"
    )
    max_image_bytes: int = Field(
        default=20 * 1024 * 1024,
        ge=1024,
        description="the largest encoded image (a /v2 input, or a chat message's image), in "
        "bytes; past it a 413. The router reads /v2 bodies to this model up to it (as base64)",
    )
    max_inputs_per_request: int = Field(
        default=64, ge=1, description="images one /v2 request may carry; more: a 400"
    )
    threshold: float = Field(
        default=0.5, ge=0, le=1, description="object-detection: lowest score returned"
    )
    candidate_labels: list[str] = Field(
        default_factory=list, description="zero-shot: labels when a request names none"
    )
    hypothesis_template: str = Field(
        default="This is a photo of {}.", description="zero-shot: label -> text"
    )
    prompt: str | None = Field(
        default=None, description="image-to-text: text the caption starts from"
    )
    max_new_tokens: int = Field(
        default=32,
        ge=1,
        le=32768,
        description="image-to-text: caption length; image-text-to-text: the most a chat "
        "request may ask for (and its default)",
    )

    @field_validator("task", mode="before")
    @classmethod
    def _task_alias(cls, value: Any) -> Any:
        return _TASK_ALIASES.get(value, value) if isinstance(value, str) else value


class TensorModelEntry(TransformersModelEntry):
    """A model served through ``/v2``: one task, one BYTES input (encoded media), JSON outputs."""

    input_name: ClassVar[str] = "image"
    engine_kwargs: MediaEngineKwargs = Field(
        description="the media engine's settings: its task, batching and input limits"
    )

    def capabilities(self) -> list[Capability]:
        return [Capability(self.engine_kwargs.task)]

    def tensor_metadata(self) -> dict[str, list[dict[str, Any]]] | None:
        outputs = OUTPUT_TENSORS[Capability(self.engine_kwargs.task)]
        return {
            "inputs": [{"name": self.input_name, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [
                {"name": name, "datatype": datatype, "shape": [-1, -1]}
                for name, datatype in outputs.items()
            ],
        }


class VisionModelEntry(TensorModelEntry):
    engine_kwargs: VisionEngineKwargs = Field(
        description="the vision engine's settings: its task (required), batching and input limits"
    )

    def is_chat(self) -> bool:
        return self.engine_kwargs.task == IMAGE_TEXT_TO_TEXT

    def capabilities(self) -> list[Capability]:
        return [Capability.CHAT] if self.is_chat() else super().capabilities()

    def tensor_metadata(self) -> dict[str, list[dict[str, Any]]] | None:
        return None if self.is_chat() else super().tensor_metadata()

    def serve_options(self) -> dict[str, Any]:
        options = super().serve_options()
        if self.is_chat() and self.deployment_config.max_ongoing_requests is None:
            # One generation at a time per replica: a few waiting in it, the rest in Serve's queue
            # (where autoscaling sees them), not a batch's worth.
            options["max_ongoing_requests"] = CHAT_ONGOING_REQUESTS
        return options

    def max_upload_bytes(self) -> int:
        return self.engine_kwargs.max_image_bytes
