"""Speech-to-text with transformers' ``automatic-speech-recognition`` pipeline: Whisper-style
sequence-to-sequence models (transcribe, translate, prompts, timestamps) and CTC models
such as Wav2Vec2 (transcribe, word timestamps). Long audio is cut into ``chunk_length_s``
windows that the pipeline batches together with the other requests' windows."""

from __future__ import annotations

from typing import Any

from common.audio_codec import AudioInputError, decode_audio
from common.engine_response import EngineResponse
from common.media_usage import MediaUsage
from common.transcripts import Segment, Transcript, render
from configs.open_api_models import InvalidRequest, parse_request
from configs.server_models import Capability
from servers.batching import Job, TaskRunner


class SpeechToText(TaskRunner):
    pipe: Any = None

    def load(self, source: str, device: str, dtype: Any) -> None:
        from transformers import pipeline

        self.pipe = pipeline(
            "automatic-speech-recognition",
            model=source,
            device=device,
            dtype=dtype,
            revision=self.kwargs.revision,
            trust_remote_code=self.kwargs.trust_remote_code,
        )
        self.pipe._forward = self._counted(self.pipe._forward)
        self.sampling_rate = self.pipe.feature_extractor.sampling_rate
        self.is_whisper = self.pipe.type == "seq2seq_whisper"
        generation = getattr(self.pipe.model, "generation_config", None)
        lang_to_id = getattr(generation, "lang_to_id", None) or {}
        self.languages = sorted(token.strip("<|>") for token in lang_to_id)

    def capabilities(self) -> list[Capability]:
        return [Capability.TRANSCRIPTION] + ([Capability.TRANSLATION] if self.is_whisper else [])

    def prepare(self, capability: Capability, body: dict[str, Any]) -> list[Job]:
        request = parse_request(
            capability, {k: v for k, v in body.items() if k not in ("file", "filename")}
        )
        data = body.get("file")
        if not isinstance(data, bytes):
            raise InvalidRequest(
                "'file' is required: upload the audio as multipart form data", "file"
            )
        if len(data) > self.kwargs.max_audio_bytes:
            raise AudioInputError(
                f"the file is {len(data)} bytes; the limit is {self.kwargs.max_audio_bytes}",
                "file_too_large",
                413,
            )
        granularities = getattr(request, "timestamp_granularities", ["segment"])
        words = "word" in granularities
        if words and request.response_format != "verbose_json":
            raise InvalidRequest(
                "timestamp_granularities needs response_format 'verbose_json'",
                "timestamp_granularities",
            )
        language = getattr(request, "language", None) or self.kwargs.language
        if language and self.is_whisper and self.languages and language not in self.languages:
            raise InvalidRequest(
                f"language {language!r} is not one this model knows; it knows: "
                f"{', '.join(self.languages)}",
                "language",
            )
        samples = decode_audio(data, self.sampling_rate, self.kwargs.max_audio_duration_s)
        task = "translate" if capability is Capability.TRANSLATION else "transcribe"
        prompt = request.prompt if self.is_whisper else None  # CTC models take no prompt
        key = (task, language, request.temperature, prompt, words)
        return [Job(request, samples, key, {"task": task, "language": language, "words": words})]

    def run(self, jobs: list[Job]) -> list[Transcript]:
        first = jobs[0]
        words = first.extra["words"]
        # CTC models only give times per word or character; Whisper per segment or word.
        return_timestamps = "word" if words or not self.is_whisper else True
        options = {"generate_kwargs": self._generate_kwargs(first)} if self.is_whisper else {}
        outputs = self.pipe(
            [job.payload for job in jobs],
            batch_size=len(jobs),
            chunk_length_s=self.kwargs.chunk_length_s,
            stride_length_s=self.kwargs.stride_length_s,
            return_timestamps=return_timestamps,
            ignore_warning=True,
            **options,
        )
        transcripts = [
            self._transcript(job, output, words) for job, output in zip(jobs, outputs, strict=True)
        ]
        # Only verbose_json reports the language; detect it when the request did not name one.
        undetected = [
            i
            for i, job in enumerate(jobs)
            if job.request.response_format == "verbose_json"
            and not job.extra["language"]
            and job.extra["task"] == "transcribe"
        ]
        if undetected and self.is_whisper and self.languages:
            codes = self._detect_languages([jobs[i] for i in undetected])
            for i, code in zip(undetected, codes, strict=True):
                transcripts[i].language = _language_name(code)
        return transcripts

    def _detect_languages(self, jobs: list[Job]) -> list[str]:
        """Whisper's language guess from each clip's first 30 s (the language token it would
        emit)."""
        import torch

        extractor = self.pipe.feature_extractor
        features = extractor(
            [job.payload[: extractor.n_samples] for job in jobs],
            sampling_rate=self.sampling_rate,
            return_tensors="pt",
        ).input_features
        with torch.inference_mode():
            token_ids = self.pipe.model.detect_language(
                features.to(self.pipe.device, self.pipe.model.dtype)
            )
        self.forward_passes += 1
        return [
            token.strip("<|>")
            for token in self.pipe.tokenizer.convert_ids_to_tokens(token_ids.view(-1).tolist())
        ]

    def _generate_kwargs(self, job: Job) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"task": job.extra["task"]}
        if job.extra["language"]:
            kwargs["language"] = job.extra["language"]
        if job.request.temperature > 0:
            kwargs.update(do_sample=True, temperature=job.request.temperature)
        if job.request.prompt:
            kwargs["prompt_ids"] = self.pipe.tokenizer.get_prompt_ids(
                job.request.prompt, return_tensors="pt"
            ).to(self.pipe.device)
        if self.kwargs.max_new_tokens:
            kwargs["max_new_tokens"] = self.kwargs.max_new_tokens
        return kwargs

    def _transcript(self, job: Job, output: dict[str, Any], words: bool) -> Transcript:
        duration = len(job.payload) / self.sampling_rate
        pieces = [_segment(chunk, duration) for chunk in output.get("chunks") or []]
        if words or not self.is_whisper:
            segments = _group_words(pieces, self.kwargs.chunk_length_s)
        else:
            segments = pieces
        language = "en" if job.extra["task"] == "translate" else job.extra["language"]
        return Transcript(
            text=output["text"].strip(),
            duration=duration,
            language=_language_name(language),
            segments=segments,
            words=pieces if words else None,
        )

    def measured(self, jobs: list[Job], results: list[Transcript]) -> MediaUsage:
        return MediaUsage(audio_in_s=sum(result.duration for result in results))

    def respond(self, jobs: list[Job], results: list[Transcript]) -> EngineResponse:
        job, result = jobs[0], results[0]
        tokenizer = self.pipe.tokenizer
        body, media_type = render(
            result,
            job.request.response_format,
            job.extra["task"],
            job.request.temperature,
            tokenize=lambda text: tokenizer.encode(text, add_special_tokens=False),
        )
        return EngineResponse(200, body, media_type)


def _language_name(code: str | None) -> str | None:
    """OpenAI reports languages by name ("english"); Whisper's table maps its codes."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return LANGUAGES.get(code, code) if code else None


def _segment(chunk: dict[str, Any], duration: float) -> Segment:
    start, end = chunk.get("timestamp") or (0.0, None)
    start = min(float(start or 0.0), duration)
    end = (
        duration if end is None else min(float(end), duration)
    )  # an unfinished last segment ends with the audio
    return Segment(start, max(end, start), chunk.get("text", ""))


def _group_words(words: list[Segment], window_s: float) -> list[Segment]:
    """Segments for models that time words only: the words of each ``window_s`` window."""
    groups: dict[int, list[Segment]] = {}
    for word in words:
        groups.setdefault(int(word.start // window_s), []).append(word)
    return [
        Segment(g[0].start, g[-1].end, " ".join(w.text.strip() for w in g).strip())
        for _, g in sorted(groups.items())
    ]
