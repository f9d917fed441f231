"""Text-to-speech. VITS models (MMS-TTS and the like) run batched: one padded forward pass
for the whole batch, each waveform cut to its own length, speed through the model's
``speaking_rate``. Other ``text-to-speech`` pipeline models run one text at a time, with
speed applied afterwards by FFmpeg's pitch-preserving ``atempo``."""

from __future__ import annotations

from typing import Any

import numpy as np

from common.audio_codec import change_tempo, encode_audio
from common.engine_response import EngineResponse
from common.media_usage import MediaUsage
from configs.open_api_models import InvalidRequest, parse_request
from configs.server_models import Capability
from servers.batching import Job, TaskRunner


class TextToSpeech(TaskRunner):
    model: Any = None
    pipe: Any = None

    def load(self, source: str, device: str, dtype: Any) -> None:
        from transformers import AutoConfig, AutoTokenizer, VitsModel, pipeline

        options = {
            "revision": self.kwargs.revision,
            "trust_remote_code": self.kwargs.trust_remote_code,
        }
        self.device = device
        if AutoConfig.from_pretrained(source, **options).model_type == "vits":
            self.tokenizer = AutoTokenizer.from_pretrained(source, **options)
            self.model = VitsModel.from_pretrained(source, dtype=dtype, **options).to(device).eval()
            self.model.forward = self._counted(self.model.forward)
            self.sampling_rate = self.model.config.sampling_rate
            self.speakers = self.model.config.num_speakers
        else:
            self.pipe = pipeline(
                "text-to-speech", model=source, device=device, dtype=dtype, **options
            )
            self.pipe._forward = self._counted(self.pipe._forward)
            self.sampling_rate = self.pipe.sampling_rate
            self.speakers = 1
        for voice, speaker in self.kwargs.voices.items():
            if not 0 <= speaker < self.speakers:
                raise ValueError(
                    f"voice {voice!r} maps to speaker {speaker}; the model has {self.speakers}"
                )

    def capabilities(self) -> list[Capability]:
        return [Capability.SPEECH]

    def prepare(self, capability: Capability, body: dict[str, Any]) -> list[Job]:
        request = parse_request(capability, body)
        if len(request.input) > self.kwargs.max_input_chars:
            raise InvalidRequest(
                f"input is {len(request.input)} characters; the limit is "
                f"{self.kwargs.max_input_chars}",
                "input",
            )
        voices = self.kwargs.voices
        if voices and request.voice not in voices:
            raise InvalidRequest(
                f"voice {request.voice!r} does not exist; voices: {', '.join(sorted(voices))}",
                "voice",
            )
        if self.model is not None and not self.tokenizer(request.input)["input_ids"]:
            raise InvalidRequest("input has no characters this model can speak", "input")
        return [Job(request, request.input, (voices.get(request.voice), request.speed))]

    def run(self, jobs: list[Job]) -> list[np.ndarray]:
        if self.model is None:
            return [self._pipeline_speech(job) for job in jobs]
        import torch

        speaker, speed = jobs[0].group_key
        inputs = self.tokenizer(
            [job.payload for job in jobs], padding=True, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            output = self.model(**inputs, speaker_id=speaker, speaking_rate=speed)
        waveforms = output.waveform.float().cpu().numpy()
        return [waveforms[i, : int(length)] for i, length in enumerate(output.sequence_lengths)]

    def _pipeline_speech(self, job: Job) -> np.ndarray:
        samples = np.asarray(self.pipe(job.payload)["audio"], dtype=np.float32).reshape(-1)
        return change_tempo(samples, self.sampling_rate, job.request.speed)

    def measured(self, jobs: list[Job], results: list[np.ndarray]) -> MediaUsage:
        return MediaUsage(audio_out_s=sum(len(samples) for samples in results) / self.sampling_rate)

    def respond(self, jobs: list[Job], results: list[np.ndarray]) -> EngineResponse:
        body, media_type = encode_audio(
            results[0], self.sampling_rate, jobs[0].request.response_format
        )
        return EngineResponse(200, body, media_type)
