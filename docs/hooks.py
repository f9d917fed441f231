"""The configuration reference page (``docs/configuration/reference.md``), written from the pydantic
models that validate ``model_config.yaml`` (``configs/``): one table per model, each field with its
type, default, limits and description.

``python docs/hooks.py`` writes the page, committed so that it reads on GitHub too. As an MkDocs
hook (``hooks:`` in ``mkdocs.yml``) it renders the page again at every build and serves that; where
the committed page differs, it warns, which fails ``mkdocs build --strict`` (``scripts/check.sh``):
the page cannot drift from what the loader accepts."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Any, get_args

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the platform's packages, wherever mkdocs is started from

from pydantic import BaseModel  # noqa: E402
from pydantic.json_schema import models_json_schema  # noqa: E402
from pydantic_core import to_jsonable_python  # noqa: E402

from configs import MODEL_ENTRY_TYPES, PlatformConfig  # noqa: E402
from configs.server_models import BaseModelEntry  # noqa: E402

PAGE = "configuration/reference.md"
PAGE_PATH = ROOT / "docs" / PAGE
REGENERATE = "python docs/hooks.py"
ENTRY = "ModelEntry"  # the section shared by every model entry, whatever its type
VLLM_ARGS = "https://docs.vllm.ai/en/stable/configuration/engine_args.html"
INTRO = f"""\
<!-- Written by `{REGENERATE}` from configs/; do not edit. -->
# Configuration reference

Every field of the platform's `args:` block, written from the pydantic models in `configs/` that
validate it (`configs.PlatformConfig` and one model entry
class per engine type). Unknown keys are refused everywhere (a misspelt key is named with the
closest valid one). The rest of the file is Ray Serve's own config
([`ServeDeploySchema`](https://docs.ray.io/en/latest/serve/api/doc/ray.serve.schema.ServeDeploySchema.html)):
`proxy_location`, `http_options`, `logging_config`, and `applications`, whose application with
`import_path: builders.app_builder:build_app` takes this block as its `args`.

A `type: vllm` model's `engine_kwargs` are vLLM's own
[engine arguments]({VLLM_ARGS}) (`vllm serve`'s flags without the dashes), checked against the
installed vLLM's `AsyncEngineArgs`; `model` and `served_model_name` come from
`model_loading_config`. The same models give the file's JSON Schema, which editors read
(`configs/model_config.schema.json`; [The schema](models.md#the-schema-for-editors)).
"""


log = logging.getLogger("mkdocs.hooks.config_reference")


def on_files(files: Files, config: MkDocsConfig) -> Files:
    page = reference_page()
    if not PAGE_PATH.exists() or PAGE_PATH.read_text() != page:
        log.warning(f"docs/{PAGE} is not what configs/ holds now: run `{REGENERATE}`")
    committed = files.get_file_from_path(PAGE)
    if committed is not None:
        files.remove(committed)
    files.append(File.generated(config, PAGE, content=page))
    return files


def reference_page() -> str:
    entries = {t.value: cls for t, cls in MODEL_ENTRY_TYPES.items()}
    models = [PlatformConfig, BaseModelEntry, *entries.values()]
    refs, schema = models_json_schema([(model, "validation") for model in models])
    defs = schema["$defs"]
    for cls in entries.values():  # shown once, as the entry's engine_kwargs per type
        defs.pop(cls.__name__)
    defs[ENTRY] = defs.pop(BaseModelEntry.__name__)
    defs[ENTRY]["properties"]["engine_kwargs"] = _engine_kwargs(entries, defs)
    defs[PlatformConfig.__name__]["properties"]["models"]["items"] = {"$ref": f"#/$defs/{ENTRY}"}
    classes = _classes(models)
    order = _reading_order(defs, [PlatformConfig.__name__, ENTRY])
    classes[ENTRY] = BaseModelEntry
    return INTRO + "".join(_section(name, defs[name], classes.get(name)) for name in order)


def _classes(models: list[type[BaseModel]]) -> dict[str, type[BaseModel]]:
    """Every model the given ones reach through their fields, by name."""
    found: dict[str, type[BaseModel]] = {}
    pending = list(models)
    while pending:
        cls = pending.pop()
        if cls.__name__ in found:
            continue
        found[cls.__name__] = cls
        for field in cls.model_fields.values():
            for arg in _annotation_types(field.annotation):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    pending.append(arg)
    return found


def _annotation_types(annotation: Any) -> list[Any]:
    return [annotation, *(t for arg in get_args(annotation) for t in _annotation_types(arg))]


def _reading_order(defs: dict[str, Any], first: list[str]) -> list[str]:
    """The sections as a reader meets them: each model after the first one that refers to it,
    then those only named in descriptions (the engine_kwargs of each type)."""
    order = list(first)
    for name in order:  # grows while it is read
        for ref in re.findall(r'"#/\$defs/([^"]+)"', json.dumps(defs[name])):
            if ref not in order:
                order.append(ref)
    return order + sorted(name for name in defs if name not in order)


def _engine_kwargs(entries: dict[str, type], defs: dict[str, Any]) -> dict[str, Any]:
    """The entry's engine_kwargs: per model_loading_config.type, the model its entry class
    declares (vLLM's arguments for vllm)."""
    kinds = []
    for type_name, cls in entries.items():
        prop = cls.model_json_schema(ref_template="{model}")["properties"]["engine_kwargs"]
        target = f"[{prop['$ref']}](#{prop['$ref'].lower()})" if "$ref" in prop else ""
        kinds.append(f"`{type_name}`: {target or f'[vLLM engine arguments]({VLLM_ARGS})'}")
    return {
        "type": "object",
        "default": {},
        "description": "the engine's settings, by `model_loading_config.type`: " + "; ".join(kinds),
    }


def _section(name: str, definition: dict[str, Any], cls: type[BaseModel] | None) -> str:
    lines = [f"\n## {name}\n"]
    if description := definition.get("description"):
        lines.append(_text(description) + "\n")
    if "enum" in definition:
        lines.append("One of " + ", ".join(f"`{v}`" for v in definition["enum"]) + ".\n")
        return "\n".join(lines)
    required = set(definition.get("required", []))
    lines += ["| field | type | default | description |", "|---|---|---|---|"]
    for field, prop in definition.get("properties", {}).items():
        default = "required" if field in required else _default(prop, cls, field)
        cells = [f"`{field}`", _type(prop), default, _text(prop.get("description", ""))]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def _type(prop: dict[str, Any]) -> str:
    """The field's type in words, with its limits; a nested model links to its section."""
    if "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in prop:
        kinds = [_type(p) for p in prop["anyOf"] if p.get("type") != "null"]
        nullable = len(kinds) < len(prop["anyOf"])
        return " or ".join(kinds) + (" or null" if nullable else "")
    if "enum" in prop:
        return "one of " + ", ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    kind = prop.get("type", "any")
    if kind == "array":
        text = f"list of {_type(prop.get('items', {}))}"
    elif kind == "object" and isinstance(prop.get("additionalProperties"), dict):
        text = f"map of string to {_type(prop['additionalProperties'])}"
    else:
        text = {"integer": "int", "number": "float", "boolean": "bool", "string": "str"}.get(
            kind, kind
        )
    return text + _limits(prop)


LIMITS = {
    "minimum": "≥ {}",
    "exclusiveMinimum": "> {}",
    "maximum": "≤ {}",
    "exclusiveMaximum": "< {}",
    "minLength": "at least {} characters",
    "maxLength": "at most {} characters",
    "minItems": "at least {} item(s)",
    "maxItems": "at most {} items",
    "pattern": "matching `{}`",
    "format": "{}",
}


def _limits(prop: dict[str, Any]) -> str:
    limits = [text.format(prop[key]) for key, text in LIMITS.items() if key in prop]
    return f" ({', '.join(limits)})" if limits else ""


def _default(prop: dict[str, Any], cls: type[BaseModel] | None, field: str) -> str:
    """The default as YAML would write it in JSON; a default_factory's value too (a nested
    model's: the fields it sets, ``{}`` for all of that model's own defaults)."""
    if "default" in prop:
        value = prop["default"]
    elif cls is not None and field in cls.model_fields:
        value = cls.model_fields[field].get_default(call_default_factory=True)
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json", exclude_unset=True)
    else:
        return ""
    return f"`{json.dumps(to_jsonable_python(value))}`"


def _text(text: str) -> str:
    """A docstring as Markdown: reStructuredText's double backquotes become code spans."""
    return " ".join(text.replace("``", "`").split())


if __name__ == "__main__":
    PAGE_PATH.write_text(reference_page())
    print(f"wrote {PAGE_PATH.relative_to(ROOT)}")
