"""Vision engine: image classification, zero-shot classification, object detection, image
captioning and image embeddings with transformers, batched by Ray Serve (``batching.py``).

Each request carries encoded images (the router has already fetched URLs under the media
policy); they are decoded with Pillow under a pixel limit, one job per image, so the images
of many requests share a forward pass.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from common.engine_response import EngineResponse
from common.media import decode_image
from common.media_usage import MediaUsage
from configs.oip_models import MediaParameters
from configs.open_api_models import InvalidRequest, validate_request
from configs.server_models import Capability
from configs.vision_models import VisionModelEntry
from servers.batching import BatchedEngine, Job, TaskRunner
from servers.tensor_outputs import json_tensor, label_score_tensors, outputs_response, tensor

_PARAMETERS = TypeAdapter(MediaParameters)


def media_parameters(body: dict[str, Any]) -> MediaParameters:
    return validate_request(_PARAMETERS, body.get("parameters") or {}, prefix=("parameters",))


def media_inputs(body: dict[str, Any], limit: int) -> list[bytes]:
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidRequest("no input: send the encoded media as a BYTES input", "inputs")
    if len(inputs) > limit:
        raise InvalidRequest(f"{len(inputs)} inputs in one request; the limit is {limit}", "inputs")
    return inputs


class VisionRunner(TaskRunner):
    pipe: Any = None

    def load(self, source: str, device: str, dtype: Any) -> None:
        options = {
            "revision": self.kwargs.revision,
            "trust_remote_code": self.kwargs.trust_remote_code,
        }
        self.task = Capability(self.kwargs.task)
        self.device = device
        if self.task is Capability.IMAGE_TO_TEXT:
            # The image-text-to-text pipeline insists on a text prompt; captioning models take none.
            from transformers import AutoModelForImageTextToText, AutoProcessor

            self.processor = AutoProcessor.from_pretrained(source, **options)
            self.model = (
                AutoModelForImageTextToText.from_pretrained(source, dtype=dtype, **options)
                .to(device)
                .eval()
            )
            self.model.generate = self._counted(self.model.generate)
        else:
            from transformers import pipeline

            self.pipe = pipeline(
                self.task.value, model=source, device=device, dtype=dtype, **options
            )
            self.pipe._forward = self._counted(self.pipe._forward)

    def capabilities(self) -> list[Capability]:
        return [self.task]

    def prepare(self, capability: Capability, body: dict[str, Any]) -> list[Job]:
        params = media_parameters(body)
        inputs = media_inputs(body, self.kwargs.max_inputs_per_request)
        key = self._group_key(params)
        return [
            Job(params, decode_image(data, self.kwargs.max_image_pixels), key) for data in inputs
        ]

    def _group_key(self, params: MediaParameters) -> Any:
        kwargs = self.kwargs
        if self.task is Capability.ZERO_SHOT_IMAGE_CLASSIFICATION:
            labels = params.candidate_labels or kwargs.candidate_labels
            if not labels:
                raise InvalidRequest(
                    "zero-shot classification needs parameters.candidate_labels",
                    "parameters.candidate_labels",
                )
            return tuple(labels), params.top_k or kwargs.top_k
        if self.task is Capability.OBJECT_DETECTION:
            return params.threshold if params.threshold is not None else kwargs.threshold
        if self.task is Capability.IMAGE_TO_TEXT:
            return params.prompt if params.prompt is not None else kwargs.prompt
        return params.top_k or kwargs.top_k

    def run(self, jobs: list[Job]) -> list[Any]:
        images, key = [job.payload for job in jobs], jobs[0].group_key
        batch = {"batch_size": len(images)}
        if self.task is Capability.IMAGE_CLASSIFICATION:
            return self.pipe(images, top_k=key, **batch)
        if self.task is Capability.ZERO_SHOT_IMAGE_CLASSIFICATION:
            labels, top_k = key
            results = self.pipe(
                images,
                candidate_labels=list(labels),
                hypothesis_template=self.kwargs.hypothesis_template,
                **batch,
            )
            return [r[:top_k] for r in results]
        if self.task is Capability.OBJECT_DETECTION:
            return self.pipe(images, threshold=key, **batch)
        if self.task is Capability.IMAGE_EMBEDDING:
            # The first token's last hidden state (CLS): a pooler head may be untrained.
            return [_first_token(states) for states in self.pipe(images, **batch)]
        return self._captions(images, key)

    def _captions(self, images: list, prompt: str | None) -> list[str]:
        import torch

        texts = {"text": [prompt] * len(images)} if prompt else {}
        inputs = self.processor(images=images, return_tensors="pt", **texts).to(
            self.device, self.model.dtype
        )
        with torch.inference_mode():
            tokens = self.model.generate(**inputs, max_new_tokens=self.kwargs.max_new_tokens)
        return [
            text.strip() for text in self.processor.batch_decode(tokens, skip_special_tokens=True)
        ]

    def measured(self, jobs: list[Job], results: list[Any]) -> MediaUsage:
        return MediaUsage(images=len(jobs))  # one job per image

    def respond(self, jobs: list[Job], results: list[Any]) -> EngineResponse:
        if self.task in (
            Capability.IMAGE_CLASSIFICATION,
            Capability.ZERO_SHOT_IMAGE_CLASSIFICATION,
        ):
            return outputs_response(label_score_tensors(results))
        if self.task is Capability.OBJECT_DETECTION:
            return outputs_response([json_tensor("detections", results)])
        if self.task is Capability.IMAGE_EMBEDDING:
            dim = len(results[0])
            return outputs_response(
                [
                    tensor(
                        "embeddings",
                        "FP32",
                        [len(results), dim],
                        [x for vector in results for x in vector],
                    )
                ]
            )
        return outputs_response([tensor("captions", "BYTES", [len(results)], results)])


def _first_token(states: Any) -> list[float]:
    """``[1, tokens, dim]`` hidden states (nested lists) -> the first token's vector."""
    while isinstance(states[0], list):
        states = states[0]
    return [float(x) for x in states]


class VisionEngine(BatchedEngine):
    entry: VisionModelEntry

    def create_runner(self) -> TaskRunner:
        return VisionRunner(self.kwargs)
