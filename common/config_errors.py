"""Turn validation failures into one error that names each YAML path and what is allowed."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class ConfigIssue:
    loc: Loc
    message: str


class ConfigError(ValueError):
    """A config that cannot be deployed; ``str()`` lists one line per bad field path."""

    def __init__(self, issues: Sequence[ConfigIssue], prefix: str = "args"):
        self.issues = list(issues)
        self.prefix = prefix
        lines = [f"  {format_loc(i.loc, prefix)}: {i.message}" for i in self.issues]
        super().__init__(
            f"invalid model config ({len(lines)} problem{'s' * (len(lines) != 1)}):\n"
            + "\n".join(lines)
        )


def format_loc(loc: Iterable[str | int], prefix: str = "") -> str:
    """``("models", 2, "engine_kwargs", "x")`` -> ``args.models[2].engine_kwargs.x``."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def issues_from_validation_error(
    err: ValidationError, model: type[BaseModel], base_loc: Loc = ()
) -> list[ConfigIssue]:
    """Map pydantic's errors to issues, adding "did you mean" for misspelt keys."""
    issues = []
    for e in err.errors(include_url=False):
        loc = tuple(p for p in e["loc"] if not _is_union_tag(p))
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc[:-1])
            message = f"unknown key '{loc[-1]}'"
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
            if close:
                message += f"; did you mean '{close[0]}'?"
            elif allowed and len(allowed) <= 25:
                message += f"; allowed keys: {', '.join(sorted(allowed))}"
        elif e["type"] == "missing":
            message = "required field is missing"
        else:
            message = e["msg"]
            if e["type"] not in ("value_error", "assertion_error"):
                message += f" (got {e.get('input')!r})"
        issues.append(ConfigIssue(base_loc + loc, message.removeprefix("Value error, ")))
    return issues


def _is_union_tag(part: str | int) -> bool:
    # pydantic adds the chosen union member to locs ("function-after[...]", "int"); users never
    # wrote it
    return isinstance(part, str) and ("[" in part or part in {"int", "str", "float", "bool"})


def _allowed_keys(model: type[BaseModel], loc: Loc) -> list[str]:
    """The field names of the (nested) model found at ``loc`` inside ``model``."""
    annotation: object = model
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(part, int):
            args = typing.get_args(annotation)
            annotation = args[0] if args else None
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            annotation = field.annotation if field else None
        else:
            return []
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _unwrap(annotation: object) -> object:
    """Optional[X] / X | None -> X, so nested models are found through optionals."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        models = [a for a in members if isinstance(a, type) and issubclass(a, BaseModel)]
        if models:
            return models[0]
        if len(members) == 1:
            return members[0]
    return annotation
