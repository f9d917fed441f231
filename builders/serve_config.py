"""The Serve config file that lists the models: read, each platform application's ``args``
validated before anything starts, and rendered per model (``builders/render.py``). Every
command that takes ``--config`` (deploy, batch, KubeRay manifests) reads it through here."""

from __future__ import annotations

import os
from typing import Any

import yaml

from common.config_errors import ConfigError, ConfigIssue, issues_from_validation_error
from common.rendered_apps import PLATFORM_IMPORT_PATH
from configs import LoadedConfig, load_platform_config


def default_config_file() -> str:
    """The file a command reads without ``--config``: ``$PLATFORM_CONFIG`` (a file mounted into the
    container image, docs/operating/container.md), else ``model_config.yaml``."""
    return os.environ.get("PLATFORM_CONFIG") or "model_config.yaml"


def load_serve_config(path: str) -> tuple[Any, dict[str, LoadedConfig]]:
    """Parse a Serve config file and validate each platform application's ``args``."""
    return validate_serve_config(load_yaml(path))


def load_yaml(path: str) -> Any:
    with open(path) as handle:
        return yaml.safe_load(handle)


def validate_serve_config(raw: Any) -> tuple[Any, dict[str, LoadedConfig]]:
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    try:
        schema = ServeDeploySchema.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(issues_from_validation_error(err, ServeDeploySchema), prefix="") from None
    loaded: dict[str, LoadedConfig] = {}
    issues: list[ConfigIssue] = []
    for index, app in enumerate(schema.applications):
        if app.import_path != PLATFORM_IMPORT_PATH:
            continue
        try:
            loaded[app.name] = load_platform_config(app.args)
        except ConfigError as err:
            issues += [
                ConfigIssue(("applications", index, "args") + i.loc, i.message) for i in err.issues
            ]
    if issues:
        raise ConfigError(issues, prefix="")
    return schema, loaded


def rendered_schema(rendered: dict[str, Any]) -> Any:
    """The Serve config ``render_serve_config`` made (each platform application split per model),
    validated: Serve refuses it when two rendered applications share a name or a route prefix."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    try:
        return ServeDeploySchema.model_validate(rendered)
    except ValidationError as err:
        issues = issues_from_validation_error(err, ServeDeploySchema)
        raise ConfigError(
            [
                ConfigIssue(i.loc, f"{i.message} (in the config rendered per model: see --render)")
                for i in issues
            ],
            prefix="",
        ) from None
