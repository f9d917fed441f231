"""Pipelines: a model of its own (``type: pipeline`` in ``/v1/models``) that chains other models.

Each step runs one task on one configured model. A step reads values the request or earlier
steps produced (audio, an image, text, documents) and produces others; the config is refused
unless every step's inputs are there and every step's model serves its task
(``configs.load_platform_config`` checks the models, ``PipelineConfig`` the flow).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.base_pydantic import StrictModel
from configs.capabilities import Capability


@dataclass(frozen=True)
class StepTask:
    capability: Capability  # what the step's model must serve
    needs: frozenset[str]
    gives: frozenset[str]
    options: frozenset[str] = frozenset()  # the step fields this task reads


def _task(
    capability: Capability, needs: Iterable[str], gives: Iterable[str], options: Iterable[str] = ()
) -> StepTask:
    return StepTask(capability, frozenset(needs), frozenset(gives), frozenset(options))


STEP_TASKS = {
    "transcribe": _task(Capability.TRANSCRIPTION, {"audio"}, {"text"}, {"language"}),
    "chat": _task(
        Capability.CHAT, {"text"}, {"text"}, {"prompt", "system", "max_tokens", "temperature"}
    ),
    "speak": _task(Capability.SPEECH, {"text"}, {"audio"}, {"voice"}),
    "caption": _task(Capability.IMAGE_TO_TEXT, {"image"}, {"text"}),
    "classify-image": _task(Capability.IMAGE_CLASSIFICATION, {"image"}, {"text"}, {"top_n"}),
    "detect": _task(Capability.OBJECT_DETECTION, {"image"}, {"text"}),
    # the best documents for the text become the context later chat steps answer from
    "rerank": _task(Capability.RERANK, {"text", "documents"}, {"context"}, {"top_n"}),
}
INPUT_FIELDS = ("audio", "image", "text", "documents")  # what a request may carry


class PipelineStep(StrictModel):
    # pydantic reads the task names from the table at runtime; mypy cannot evaluate the Literal
    task: Literal[tuple(STEP_TASKS)] = Field(  # type: ignore[valid-type]
        description="what the step does: transcribe (audio -> text), chat (text -> text), speak "
        "(text -> audio), caption, classify-image or detect (image -> text), rerank (text and "
        "documents -> the context of later chat steps)"
    )
    model: str = Field(min_length=1, description="a configured model that serves the task")
    prompt: str | None = Field(
        default=None, description="chat: the user message; {text} and {context} are filled in"
    )
    system: str | None = Field(
        default=None, description="chat: a system message sent before the prompt"
    )
    max_tokens: int | None = Field(
        default=None, ge=1, description="chat: the answer's max_tokens; unset: the model's"
    )
    temperature: float | None = Field(
        default=None, ge=0, le=2, description="chat: the sampling temperature; unset: the model's"
    )
    voice: str = Field(default="alloy", description="speak: the voice the text is spoken in")
    language: str | None = Field(
        default=None,
        description="transcribe: the audio's language (ISO-639-1); unset: the model's default, "
        "or detected",
    )
    top_n: int = Field(
        default=3,
        ge=1,
        le=100,
        description="rerank: the documents kept as context; classify-image: the labels given",
    )

    @model_validator(mode="after")
    def _options_of_its_task(self) -> PipelineStep:
        allowed = STEP_TASKS[self.task].options | {"task", "model"}
        stray = sorted(name for name in self.model_fields_set if name not in allowed)
        if stray:
            raise ValueError(
                f"{', '.join(stray)} do(es) not apply to a {self.task!r} step; "
                f"it takes: {', '.join(sorted(STEP_TASKS[self.task].options)) or 'no options'}"
            )
        return self

    @property
    def spec(self) -> StepTask:
        return STEP_TASKS[self.task]


class PipelineConfig(StrictModel):
    model_id: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/\-]*$",
        description="the pipeline's name, which clients send as model to /v1/pipelines "
        "(listed in /v1/models as type pipeline); not also a model's id",
    )
    steps: list[PipelineStep] = Field(
        min_length=1,
        max_length=16,
        description="the steps in order; each reads what the request or an earlier step gave",
    )
    timeout_s: float = Field(
        default=120, gt=0, description="the whole chain's; past it a 504 names the step"
    )

    @model_validator(mode="after")
    def _values_flow(self) -> PipelineConfig:
        """The request brings what the first step needs (and documents); each later step reads only
        what the request or an earlier step has."""
        available = set(self.steps[0].spec.needs) | {"documents"}
        for index, step in enumerate(self.steps):
            missing = step.spec.needs - available
            if missing:
                raise ValueError(
                    f"steps[{index}]: a {step.task!r} step needs {', '.join(sorted(missing))}, "
                    f"which no earlier step gives"
                )
            available |= step.spec.gives
        return self

    def inputs(self) -> list[str]:
        """The request fields this pipeline takes (documents only when a step ranks them)."""
        needs = set(self.steps[0].spec.needs) | {
            "documents" for s in self.steps if "documents" in s.spec.needs
        }
        return [name for name in INPUT_FIELDS if name in needs]


class PipelineRequest(BaseModel):
    """``POST /v1/pipelines``, as the OpenAPI description shows it: the pipeline's id and the
    inputs its first step reads (its card's ``inputs``)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    audio: str | None = Field(
        default=None, description="base64, a data: URL or an allowed http(s) URL"
    )
    image: str | None = Field(
        default=None, description="base64, a data: URL or an allowed http(s) URL"
    )
    text: str | None = Field(default=None, min_length=1)
    documents: list[str] | None = Field(default=None, min_length=1)
