"""Typed platform config: ``load_platform_config(args)`` validates a YAML ``args:`` block."""

from __future__ import annotations

import functools
import hashlib
import inspect
import sys
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from common.config_errors import ConfigError, ConfigIssue, issues_from_validation_error
from common.passed_checks import passed_before, remember_passed
from common.serve_options import replica_range
from common.upload_sizes import UPLOAD_COPIES_HELD, largest_upload_body
from configs.audio_models import AudioModelEntry
from configs.server_models import (
    BaseModelEntry,
    Capability,
    ModelType,
    PlatformConfig,
    PlatformSettings,
)
from configs.video_models import VideoModelEntry
from configs.vision_models import VisionModelEntry
from configs.vllm_models import VLLMModelEntry

# One entry class per engine type; the engine classes are registered in servers/.
MODEL_ENTRY_TYPES: dict[ModelType, type[BaseModelEntry]] = {
    ModelType.VLLM: VLLMModelEntry,
    ModelType.AUDIO: AudioModelEntry,
    ModelType.VISION: VisionModelEntry,
    ModelType.VIDEO: VideoModelEntry,
}


QUEUE_PER_CAPACITY = 2
MIN_QUEUE = 8  # room for requests that wait while a scaled-to-zero deployment starts


@dataclass
class DeploymentSpec:
    """One engine deployment: its Serve options and the models each of its replicas loads."""

    name: str
    options: dict[str, Any]
    models: list[BaseModelEntry]


@dataclass
class LoadedConfig:
    platform: PlatformConfig
    models: list[BaseModelEntry]
    models_key: str  # "models" or the seed's "llm_configs", for error paths

    def deployments(self) -> list[DeploymentSpec]:
        """A deployment per ungrouped model, and one per group holding all of its models."""
        specs = [
            DeploymentSpec(m.deployment_name, bounded_queue(m.serve_options()), [m])
            for m in self.models
            if not m.group
        ]
        for group in self.platform.groups:
            members = [m for m in self.models if m.group == group.name]
            # Room in the queue for every member's own default, unless the group sets it.
            defaults = {
                **BaseModelEntry.default_serve_options,
                "max_ongoing_requests": sum(
                    m.serve_options().get("max_ongoing_requests", 5) for m in members
                ),
            }
            specs.append(
                DeploymentSpec(
                    group.name,
                    bounded_queue(group.deployment_config.serve_options(defaults)),
                    members,
                )
            )
        return specs


def bounded_queue(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with a ``max_queued_requests`` unless the YAML set one (-1: unbounded):
    QUEUE_PER_CAPACITY requests waiting per request the deployment can run at its peak replicas.
    Serve's default is unbounded: under overload every caller waits, memory grows, and clients
    time out instead of getting a 503 with Retry-After at once."""
    if "max_queued_requests" in options:
        return options
    capacity = options.get("max_ongoing_requests", 5) * replica_range(options)[1]
    return {**options, "max_queued_requests": max(MIN_QUEUE, QUEUE_PER_CAPACITY * capacity)}


def require_secrets(platform: PlatformSettings) -> None:
    """Refuse to serve ``platform`` where its keys are missing here, too short or given twice."""
    problems = platform.secret_problems()
    if problems:
        raise ConfigError([ConfigIssue((field,), message) for field, message in problems])


def load_platform_settings(args: dict[str, Any] | None) -> PlatformSettings:
    """Validate the router application's ``args``: the shared settings, no models."""
    try:
        return PlatformSettings.model_validate(args or {})
    except ValidationError as err:
        raise ConfigError(issues_from_validation_error(err, PlatformSettings)) from None


def load_platform_config(args: dict[str, Any] | None) -> LoadedConfig:
    """Validate the whole ``args:`` block, collecting every problem before failing."""
    if not isinstance(args, dict):
        raise ConfigError([ConfigIssue((), f"must be a mapping, got {type(args).__name__}")])
    models_key = "llm_configs" if "llm_configs" in args and "models" not in args else "models"
    try:
        platform = PlatformConfig.model_validate(args)
    except ValidationError as err:
        raise ConfigError(issues_from_validation_error(err, PlatformConfig)) from None

    issues: list[ConfigIssue] = []
    indexed: list[tuple[int, BaseModelEntry]] = []
    for index, raw in enumerate(platform.models):
        entry = _load_model_entry(
            raw, (models_key, index), issues, platform.engine_kwargs_checked_by
        )
        if entry is not None:
            indexed.append((index, entry))
    issues += _cross_model_issues(indexed, models_key) + _group_issues(
        platform, indexed, models_key
    )
    issues += _upload_memory_issues(platform, indexed, models_key)
    issues += _pipeline_issues(platform, [entry for _, entry in indexed])
    if issues:
        raise ConfigError(issues)
    return LoadedConfig(platform, [entry for _, entry in indexed], models_key)


def _load_model_entry(
    raw: Any, loc: tuple, issues: list[ConfigIssue], checked_by: str | None
) -> BaseModelEntry | None:
    if not isinstance(raw, dict):
        issues.append(ConfigIssue(loc, "each model must be a mapping"))
        return None
    loading = raw.get("model_loading_config")
    raw_type = loading.get("type") if isinstance(loading, dict) else None
    entry_cls = _entry_class(raw_type)
    if entry_cls is None and raw_type == ModelType.PIPELINE.value:
        issues.append(
            ConfigIssue(
                loc + ("model_loading_config", "type"),
                "a pipeline is declared under 'pipelines:' (model_id, steps), not among the models",
            )
        )
        return None
    if entry_cls is None:
        allowed = ", ".join(t.value for t in MODEL_ENTRY_TYPES)
        message = (
            "required field is missing" if raw_type is None else f"unknown model type {raw_type!r}"
        )
        issues.append(
            ConfigIssue(loc + ("model_loading_config", "type"), f"{message}; allowed: {allowed}")
        )
        return None
    entry = None
    try:
        entry = entry_cls.model_validate(raw)
    except ValidationError as err:
        issues.extend(issues_from_validation_error(err, entry_cls, loc))
    checker = entry_cls.engine_kwargs_checker()
    if checked_by is not None and checked_by == checker:
        return entry  # the renderer checked engine_kwargs with this very library
    raw_kwargs = raw.get("engine_kwargs")
    if not isinstance(raw_kwargs, dict):
        return entry
    remembered = f"{checker} {_check_code(entry_cls)}" if checker else None
    if remembered and passed_before(remembered, raw_kwargs):
        return entry
    kwargs_model = entry_cls.engine_kwargs_model()
    if kwargs_model is not None:
        try:
            kwargs_model.model_validate(raw_kwargs)
        except ValidationError as err:
            issues.extend(issues_from_validation_error(err, kwargs_model, loc + ("engine_kwargs",)))
            return None
        if remembered:
            remember_passed(remembered, raw_kwargs)
    return entry


@functools.cache
def _check_code(entry_cls: type[BaseModelEntry]) -> str:
    """A digest of the module that checks ``entry_cls``'s ``engine_kwargs``: a platform update
    that changes the check checks again what the old one accepted."""
    source = inspect.getsource(sys.modules[entry_cls.__module__])
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def _entry_class(raw_type: Any) -> type[BaseModelEntry] | None:
    if not isinstance(raw_type, str):
        return None
    try:
        return MODEL_ENTRY_TYPES.get(ModelType(raw_type.lower()))
    except ValueError:
        return None


def _group_issues(
    platform: PlatformConfig, indexed: list[tuple[int, BaseModelEntry]], models_key: str
) -> list[ConfigIssue]:
    """A grouped model takes its deployment from the group, holds no variants, and is not vLLM
    (vLLM runs its own engine process and sizes memory for the GPU it alone holds)."""
    issues = []
    names = [g.name for g in platform.groups]
    for index, entry in indexed:
        if entry.group is None:
            continue
        loc = (models_key, index)
        if entry.group not in names:
            allowed = ", ".join(names) or "none are defined"
            issues.append(
                ConfigIssue(loc + ("group",), f"unknown group {entry.group!r}; groups: {allowed}")
            )
        if entry.deployment_config.model_fields_set:
            issues.append(
                ConfigIssue(
                    loc + ("deployment_config",),
                    f"a model in group {entry.group!r} is deployed by the group: move "
                    "these options to the group's deployment_config",
                )
            )
        if entry.model_loading_config.type is ModelType.VLLM:
            issues.append(
                ConfigIssue(
                    loc + ("group",),
                    "vLLM models cannot join a group; give the model its "
                    "own deployment (and GPU share) instead",
                )
            )
        if entry.multiplex_config is not None:
            issues.append(
                ConfigIssue(loc + ("multiplex_config",), "a model in a group cannot have variants")
            )
    model_names = {e.deployment_name for _, e in indexed if e.group is None}
    for position, group in enumerate(platform.groups):
        if names.index(group.name) != position:
            issues.append(
                ConfigIssue(("groups", position, "name"), f"duplicate group {group.name!r}")
            )
        elif group.name in model_names:
            issues.append(
                ConfigIssue(
                    ("groups", position, "name"),
                    f"{group.name!r} is also a model's deployment name",
                )
            )
        if not any(e.group == group.name for _, e in indexed):
            issues.append(ConfigIssue(("groups", position), f"group {group.name!r} has no models"))
    return issues


def _cross_model_issues(
    indexed: list[tuple[int, BaseModelEntry]], models_key: str
) -> list[ConfigIssue]:
    issues = []
    seen_ids: dict[str, int] = {}
    seen_names: dict[str, int] = {}
    for index, entry in indexed:
        if entry.model_id in seen_ids:
            issues.append(
                ConfigIssue(
                    (models_key, index, "model_loading_config", "model_id"),
                    f"duplicate model_id {entry.model_id!r} "
                    f"(also {models_key}[{seen_ids[entry.model_id]}])",
                )
            )
        seen_ids.setdefault(entry.model_id, index)
        if entry.group:
            continue  # group members share the group's deployment by design
        if entry.deployment_name in seen_names:
            issues.append(
                ConfigIssue(
                    (models_key, index, "deployment_config", "name"),
                    f"duplicate deployment name {entry.deployment_name!r} "
                    f"(also {models_key}[{seen_names[entry.deployment_name]}])",
                )
            )
        seen_names.setdefault(entry.deployment_name, index)
    return issues


def _pipeline_issues(platform: PlatformConfig, models: list[BaseModelEntry]) -> list[ConfigIssue]:
    """Every step names a configured model (or a variant of one) that serves the step's task."""
    by_id: dict[str, BaseModelEntry] = {m.model_id: m for m in models}
    by_id.update({f"{m.model_id}:{v}": m for m in models for v in m.variants()})
    issues = []
    for index, pipeline in enumerate(platform.pipelines):
        if pipeline.model_id in by_id:
            issues.append(
                ConfigIssue(
                    ("pipelines", index, "model_id"),
                    f"{pipeline.model_id!r} is also a model's id; "
                    "a pipeline needs a name of its own",
                )
            )
        for number, step in enumerate(pipeline.steps):
            where = ("pipelines", index, "steps", number, "model")
            entry = by_id.get(step.model)
            if entry is None:
                issues.append(
                    ConfigIssue(
                        where, f"no model {step.model!r}; models: {', '.join(sorted(by_id))}"
                    )
                )
            elif step.spec.capability not in entry.capabilities():
                serves = ", ".join(c.value for c in entry.capabilities())
                issues.append(
                    ConfigIssue(
                        where,
                        f"{step.model!r} cannot run a {step.task!r} step (it needs "
                        f"{step.spec.capability.value}); the model serves: {serves}",
                    )
                )
    return issues


def _upload_memory_issues(
    platform: PlatformConfig, indexed: list[tuple[int, BaseModelEntry]], models_key: str
) -> list[ConfigIssue]:
    """A router that could never hold one of a model's largest uploads would refuse them all."""
    bound = platform.router.max_upload_memory_bytes
    issues = []
    for index, entry in indexed:
        needed = UPLOAD_COPIES_HELD * largest_upload_body(entry.max_upload_bytes() or 0)
        if entry.max_upload_bytes() and needed > bound:
            issues.append(
                ConfigIssue(
                    ("router", "max_upload_memory_bytes"),
                    f"{bound} cannot hold one of the largest uploads of {models_key}[{index}] "
                    f"({entry.model_id!r}: {needed} bytes at the peak); raise it or lower the "
                    f"model's file limit",
                )
            )
    return issues


__all__ = [
    "Capability",
    "ConfigError",
    "DeploymentSpec",
    "LoadedConfig",
    "ModelType",
    "PlatformConfig",
    "PlatformSettings",
    "load_platform_config",
    "load_platform_settings",
    "require_secrets",
    "MODEL_ENTRY_TYPES",
]
