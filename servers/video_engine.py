"""Video engine: video classification (VideoMAE-style) over frames sampled with PyAV, batched
by Ray Serve (``batching.py``): the clips of many requests share a forward pass."""

from __future__ import annotations

from typing import Any

from common.engine_response import EngineResponse
from common.input_errors import InputError
from common.media import FrameSampling, decode_clip
from common.media_usage import MediaUsage
from configs.server_models import Capability
from configs.video_models import VideoModelEntry
from servers.batching import BatchedEngine, Job, TaskRunner
from servers.tensor_outputs import label_score_tensors, outputs_response
from servers.vision_engine import media_inputs, media_parameters


class VideoRunner(TaskRunner):
    def load(self, source: str, device: str, dtype: Any) -> None:
        from transformers import AutoImageProcessor, AutoModelForVideoClassification

        options = {
            "revision": self.kwargs.revision,
            "trust_remote_code": self.kwargs.trust_remote_code,
        }
        self.processor = AutoImageProcessor.from_pretrained(source, **options)
        self.model = (
            AutoModelForVideoClassification.from_pretrained(source, dtype=dtype, **options)
            .to(device)
            .eval()
        )
        self.model.forward = self._counted(self.model.forward)
        self.device = device
        num_frames = self.kwargs.num_frames or getattr(self.model.config, "num_frames", 16)
        self.sampling = FrameSampling(
            num_frames, self.kwargs.frame_stride, self.kwargs.fps, _input_edge(self.processor)
        )

    def capabilities(self) -> list[Capability]:
        return [Capability.VIDEO_CLASSIFICATION]

    def prepare(self, capability: Capability, body: dict[str, Any]) -> list[Job]:
        params = media_parameters(body)
        jobs = []
        for data in media_inputs(body, self.kwargs.max_inputs_per_request):
            if len(data) > self.kwargs.max_video_bytes:
                raise InputError(
                    f"the video is {len(data)} bytes; the limit is {self.kwargs.max_video_bytes}",
                    "video_too_large",
                    413,
                    "inputs",
                )
            clip = decode_clip(
                data,
                self.sampling,
                self.kwargs.max_video_duration_s,
                self.kwargs.max_frame_pixels,
            )
            top_k = params.top_k or self.kwargs.top_k
            jobs.append(Job(params, list(clip.frames), top_k, {"duration_s": clip.duration_s}))
        return jobs

    def run(self, jobs: list[Job]) -> list[list[dict[str, Any]]]:
        import torch

        inputs = self.processor([job.payload for job in jobs], return_tensors="pt").to(
            self.device, self.model.dtype
        )
        with torch.inference_mode():
            probabilities = self.model(**inputs).logits.float().softmax(-1).cpu()
        top_k = min(jobs[0].group_key, probabilities.shape[-1])
        scores, indexes = probabilities.topk(top_k, dim=-1)
        labels = self.model.config.id2label
        return [
            [
                {"label": labels[int(i)], "score": float(s)}
                for s, i in zip(row_scores, row_indexes, strict=True)
            ]
            for row_scores, row_indexes in zip(scores, indexes, strict=True)
        ]

    def measured(self, jobs: list[Job], results: list[Any]) -> MediaUsage:
        return MediaUsage(video_s=sum(job.extra["duration_s"] for job in jobs))

    def respond(self, jobs: list[Job], results: list[Any]) -> EngineResponse:
        return outputs_response(label_score_tensors(results))


class VideoEngine(BatchedEngine):
    entry: VideoModelEntry

    def create_runner(self) -> TaskRunner:
        return VideoRunner(self.kwargs)


def _input_edge(processor: Any) -> int | None:
    """The shorter side of the model's input (frames are scaled to it as they are decoded; the
    processor then resizes and crops as it always does)."""
    size = getattr(processor, "size", None) or {}
    edge = size.get("shortest_edge") or min(size.get("height") or 0, size.get("width") or 0)
    return int(edge) or None
