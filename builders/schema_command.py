"""``deploy_app.py schema``: print the config file's JSON Schema (``builders.config_schema``),
write the committed copy editors read, or check config files against it, one line per bad field
naming its path."""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Iterator
from typing import Any

import yaml
from jsonschema import ValidationError
from jsonschema.validators import validator_for

from builders.config_schema import SCHEMA_PATH, config_schema, schema_text
from builders.serve_config import load_yaml
from common.config_errors import format_loc


def schema_errors(document: Any, schema: dict[str, Any]) -> list[str]:
    """``path: problem`` for each way ``document`` breaks ``schema``."""
    errors = validator_for(schema)(schema).iter_errors(document)
    lines = [line for error in errors for leaf in _leaves(error) for line in _describe(leaf)]
    return sorted(set(lines), key=lines.index)


def _leaves(error: ValidationError) -> Iterator[ValidationError]:
    """The errors under an anyOf (X or null, a type in any case): those of the first alternative
    of the value's own type, not "is not valid under any of the given schemas"."""
    if not error.context:
        yield error
        return
    branches: dict[Any, list[ValidationError]] = {}
    for inner in error.context:
        branches.setdefault(inner.relative_schema_path[0], []).append(inner)
    of_its_type = [
        inner_errors
        for inner_errors in branches.values()
        if not any(e.validator == "type" and not e.relative_path for e in inner_errors)
    ]
    for inner in (of_its_type or list(branches.values()))[0]:
        yield from _leaves(inner)


def _describe(error: ValidationError) -> Iterator[str]:
    path = list(error.absolute_path)
    schema, instance = error.schema, error.instance
    if error.validator != "additionalProperties" or not (
        isinstance(schema, dict) and isinstance(instance, dict)
    ):
        yield f"{format_loc(path) or '(the file)'}: {error.message}"
        return
    allowed = list(schema.get("properties", {}))
    for key in instance:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"allowed keys: {', '.join(allowed)}"
            yield f"{format_loc([*path, key])}: unknown key '{key}'; {hint}"


def check_files(paths: list[str], schema: dict[str, Any]) -> bool:
    """Print each file's problems (or ``ok``); whether all passed."""
    passed = True
    for path in paths:
        try:
            problems = schema_errors(load_yaml(path), schema)
        except (OSError, yaml.YAMLError) as err:
            problems = [f"cannot read: {err}"]
        for problem in problems:
            print(f"{path}: {problem}", file=sys.stderr)
        if not problems:
            print(f"{path}: ok")
        passed = passed and not problems
    return passed


def schema_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="deploy_app.py schema",
        description="Print the JSON Schema of model_config.yaml, generated from the config models "
        "(vLLM's engine arguments where vLLM is installed), write it, or check files against it.",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--write",
        nargs="?",
        const=str(SCHEMA_PATH),
        metavar="PATH",
        help=f"write it to PATH (default: {SCHEMA_PATH.relative_to(SCHEMA_PATH.parents[1])}, the "
        "copy the configs' `# yaml-language-server: $schema=` lines name)",
    )
    action.add_argument(
        "--check",
        nargs="+",
        metavar="FILE",
        help="validate config files against it; each problem names its field (exit 1 on any)",
    )
    args = parser.parse_args(argv)
    schema = config_schema()
    if args.check:
        return 0 if check_files(args.check, schema) else 1
    if args.write:
        with open(args.write, "w") as handle:
            handle.write(schema_text(schema))
        print(f"wrote {args.write}")
        return 0
    sys.stdout.write(schema_text(schema))
    return 0
