"""The JSON Schema of model_config.yaml: the committed copy is the generated one, the shipped
configs pass it and name it on their first line, a misspelt field fails naming its path, and
every field of the platform's own models is described."""

import copy
import json
import os
from pathlib import Path
from typing import get_args

import pytest
import yaml
from jsonschema.validators import validator_for
from pydantic import BaseModel

from builders.config_schema import MODEL_ENTRY, REGENERATE, SCHEMA_PATH, config_schema, schema_text
from builders.schema_command import schema_errors
from builders.vllm_args_schema import VLLM_KWARGS
from configs import MODEL_ENTRY_TYPES, PlatformConfig
from configs.server_models import BaseModelEntry
from configs.vllm_models import PLATFORM_OWNED_ARGS, installed_vllm, vllm_engine_kwargs_model
from deploy_app import main

ROOT = Path(__file__).resolve().parents[2]
HEADER = "# yaml-language-server: $schema="


def shipped_configs() -> list[Path]:
    """model_config.yaml and every Serve config under examples/ (not Prometheus' and such)."""
    examples = sorted(p for p in (ROOT / "examples").rglob("*.y*ml"))
    serve_configs = [p for p in examples if "applications" in (yaml.safe_load(p.read_text()) or {})]
    return [ROOT / "model_config.yaml", *serve_configs]


@pytest.fixture(scope="module")
def committed() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


@pytest.fixture(scope="module")
def schema(committed) -> dict:
    """Generated here; vLLM's part from the committed copy where another vLLM is installed."""
    vllm_part = committed["$defs"].get(VLLM_KWARGS)
    same_vllm = (vllm_part or {}).get("$comment") == installed_vllm()
    return config_schema() if same_vllm else config_schema(vllm_kwargs=vllm_part)


def test_the_committed_schema_is_the_generated_one(schema):
    assert SCHEMA_PATH.read_text() == schema_text(schema), (
        f"{SCHEMA_PATH.relative_to(ROOT)} is stale: regenerate it with `{REGENERATE}`"
    )
    validator_for(schema).check_schema(schema)


def _keywords(node: dict) -> list[tuple[str, set[str]]]:
    """(keyword, the keywords beside it) for each keyword of each subschema in ``node``."""
    found = [(keyword, set(node) - {keyword}) for keyword in node]
    for keyword, value in node.items():
        if keyword in ("properties", "$defs", "patternProperties"):
            found += [k for sub in value.values() for k in _keywords(sub)]
        elif keyword in ("allOf", "anyOf", "oneOf") or (
            keyword == "items" and isinstance(value, list)
        ):
            found += [k for sub in value for k in _keywords(sub)]
        elif isinstance(value, dict) and keyword not in ("default", "const", "examples"):
            found += _keywords(value)
    return found


def test_the_schema_keeps_to_draft_7_which_editors_validate_by(schema):
    """Newer keywords (prefixItems, unevaluatedProperties) would be ignored by YAML language
    servers, and so would a constraint beside a $ref."""
    draft_7 = set(validator_for(schema).META_SCHEMA["properties"]) | {"$defs"}
    annotations = {"title", "description", "default", "examples", "$comment"}
    keywords = _keywords(schema)
    assert {k for k, _ in keywords} - draft_7 == set()
    assert [beside for k, beside in keywords if k == "$ref" and beside - annotations] == []


@pytest.mark.skipif(installed_vllm() is None, reason="vLLM is not installed")
def test_vllm_engine_kwargs_are_vllms_own_arguments(schema):
    kwargs = schema["$defs"][VLLM_KWARGS]
    assert set(kwargs["properties"]) == set(vllm_engine_kwargs_model().model_fields)
    assert not set(kwargs["properties"]) & set(PLATFORM_OWNED_ARGS)
    assert kwargs["additionalProperties"] is False
    max_num_seqs = kwargs["properties"]["max_num_seqs"]
    assert "sequences" in max_num_seqs["description"]
    assert "float32" in kwargs["properties"]["dtype"]["enum"]
    assert kwargs["properties"]["enforce_eager"] == {
        **kwargs["properties"]["enforce_eager"],
        "type": "boolean",
        "default": False,
    }


@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_shipped_configs_pass_and_name_the_schema(path, schema):
    assert schema_errors(yaml.safe_load(path.read_text()), schema) == []
    first = path.read_text().splitlines()[0]
    assert first.startswith(HEADER), f"{path.name} must start with {HEADER}<relative path>"
    named = (path.parent / first.removeprefix(HEADER).strip()).resolve()
    assert named == SCHEMA_PATH, f"{path.name}'s first line names {named}, not the schema"


def _platform_app(config: dict) -> tuple[int, dict]:
    return next(
        (i, app)
        for i, app in enumerate(config["applications"])
        if app["import_path"] == "builders.app_builder:build_app"
    )


def _first_model(args: dict, model_type: str) -> tuple[int, dict]:
    return next(
        (i, m)
        for i, m in enumerate(args["models"])
        if m["model_loading_config"]["type"] == model_type
    )


def _misspell(mapping: dict, key: str, typo: str) -> None:
    mapping[typo] = mapping.pop(key)


def test_misspelt_fields_are_rejected_naming_their_path(schema):
    config = yaml.safe_load((ROOT / "model_config.yaml").read_text())
    bad = copy.deepcopy(config)
    index, app = _platform_app(bad)
    args = app["args"]
    vllm, chat = _first_model(args, "vllm")
    audio, speech = _first_model(args, "audio")
    _misspell(bad, "proxy_location", "proxy_locaton")
    _misspell(app, "route_prefix", "route_prefx")
    chat["engine_kwargs"]["max_num_seq"] = 8
    chat["deployment_config"]["ray_actor_options"]["num_cpu"] = 1
    speech["engine_kwargs"]["chunk_lenght_s"] = 10
    args["medias"] = {}
    at = f"applications[{index}]"
    assert sorted(schema_errors(bad, schema)) == [
        f"{at}.args.medias: unknown key 'medias'; did you mean 'media'?",
        f"{at}.args.models[{vllm}].deployment_config.ray_actor_options.num_cpu: "
        "unknown key 'num_cpu'; did you mean 'num_cpus'?",
        f"{at}.args.models[{vllm}].engine_kwargs.max_num_seq: "
        "unknown key 'max_num_seq'; did you mean 'max_num_seqs'?",
        f"{at}.args.models[{audio}].engine_kwargs.chunk_lenght_s: "
        "unknown key 'chunk_lenght_s'; did you mean 'chunk_length_s'?",
        f"{at}.route_prefx: unknown key 'route_prefx'; did you mean 'route_prefix'?",
        "proxy_locaton: unknown key 'proxy_locaton'; did you mean 'proxy_location'?",
    ]


def test_each_type_takes_its_own_engine_kwargs_and_values(schema):
    args = {
        "models": [
            {
                "model_loading_config": {"model_id": "a", "model_source": "org/a", "type": "audio"},
                "engine_kwargs": {"task": "text-to-speech", "max_num_seqs": 8},
            },
            {
                "model_loading_config": {"model_id": "b", "model_source": "org/b", "type": "vlm"},
            },
            {
                "model_loading_config": {
                    "model_id": "c",
                    "model_source": "org/c",
                    "type": "vision",
                },
                "engine_kwargs": {"task": "captioning"},
            },
        ]
    }
    config = {"applications": [{"import_path": "builders.app_builder:build_app", "args": args}]}
    models = "applications[0].args.models"
    audio_kwargs, *others = sorted(schema_errors(config, schema))
    assert audio_kwargs.startswith(
        f"{models}[0].engine_kwargs.max_num_seqs: unknown key 'max_num_seqs'; allowed keys: dtype,"
    )
    assert others == [
        f"{models}[1].model_loading_config.type: 'vlm' is not one of "
        "['vllm', 'audio', 'vision', 'video']",
        f"{models}[2].engine_kwargs.task: 'captioning' is not one of "
        "['image-classification', 'zero-shot-image-classification', 'object-detection', "
        "'image-to-text', 'image-feature-extraction', 'image-text-to-text']",
    ]


def test_what_the_loader_accepts_passes(schema):
    """The seed's spellings (llm_configs, VLLM), task aliases, an empty engine_kwargs, and
    another builder's args, which the platform does not read."""
    seed = {
        "applications": [
            {
                "name": "seed",
                "import_path": "builders.app_builder:build_app",
                "args": {
                    "llm_configs": [
                        {
                            "model_loading_config": {
                                "model_id": "x",
                                "model_source": "org/x",
                                "type": "VLLM",
                            },
                            "engine_kwargs": {"tensor_parallel_size": 0, "dtype": "float16"},
                        },
                        {
                            "model_loading_config": {
                                "model_id": "w",
                                "model_source": "org/w",
                                "type": "audio",
                            },
                            "engine_kwargs": {"task": "asr"},
                        },
                        {
                            "model_loading_config": {
                                "model_id": "v",
                                "model_source": "org/v",
                                "type": "video",
                            },
                            "engine_kwargs": None,
                        },
                    ]
                },
            },
            {"name": "other", "import_path": "my_app:app", "args": {"anything": 1}},
        ]
    }
    assert schema_errors(seed, schema) == []


def test_the_command_checks_files(tmp_path, capsys):
    bad = yaml.safe_load((ROOT / "model_config.yaml").read_text())
    index, app = _platform_app(bad)
    app["args"]["router"] = {"max_request_byte": 1024}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    good = os.path.relpath(ROOT / "model_config.yaml")
    assert main(["schema", "--check", good, str(path)]) == 1
    out, err = capsys.readouterr()
    assert f"{good}: ok" in out
    assert err == (
        f"{path}: applications[{index}].args.router.max_request_byte: "
        "unknown key 'max_request_byte'; did you mean 'max_request_bytes'?\n"
    )


def _config_classes() -> dict[type[BaseModel], str]:
    """The platform's config models (configs/) that the schema holds, with their definitions'
    names: those the args block and each entry type reach through their fields (an entry class
    is the schema's ModelEntry)."""
    found: dict[type[BaseModel], str] = {}
    pending: list[type[BaseModel]] = [PlatformConfig, BaseModelEntry, *MODEL_ENTRY_TYPES.values()]
    while pending:
        cls = pending.pop()
        if cls in found:
            continue
        found[cls] = MODEL_ENTRY if issubclass(cls, BaseModelEntry) else cls.__name__
        for field in cls.model_fields.values():
            pending += [
                t
                for t in _annotation_types(field.annotation)
                if isinstance(t, type) and issubclass(t, BaseModel)
            ]
    return {cls: name for cls, name in found.items() if cls.__module__.startswith("configs.")}


def _annotation_types(annotation) -> list:
    return [annotation, *(t for arg in get_args(annotation) for t in _annotation_types(arg))]


def _def_name(cls: type[BaseModel], name: str, defs: dict) -> str:
    """Pydantic names a definition after its class, or by module where two classes share a name
    (the platform's AutoscalingConfig and Serve's)."""
    qualified = f"{cls.__module__.replace('.', '__')}__{cls.__qualname__}"
    return name if name in defs or name == MODEL_ENTRY else qualified


def test_every_field_of_the_platforms_models_is_described(schema):
    """Editors and the configuration reference show each field's description: every property of
    configs/' models has one, in the schema (the type-dependent engine_kwargs of a model entry
    included) and in the models themselves (base classes included)."""
    defs = schema["$defs"]
    names = {_def_name(cls, name, defs) for cls, name in _config_classes().items()}
    assert {"PlatformConfig", MODEL_ENTRY, "DeploymentConfig", "PipelineStep"} <= names
    assert names <= set(defs), f"not in the schema: {sorted(names - set(defs))}"
    undescribed = []
    for name in sorted(names):
        definition = defs[name]
        branches = [branch["then"] for branch in definition.get("allOf", [])]
        for where, part in [(name, definition), *((f"{name} (if/then)", b) for b in branches)]:
            undescribed += [
                f"{where}.{field}"
                for field, prop in part.get("properties", {}).items()
                if not prop.get("description")
            ]
    models = {
        base
        for cls in _config_classes()
        for base in cls.__mro__
        if issubclass(base, BaseModel) and base.__module__.startswith("configs.")
    }
    undescribed += sorted(
        f"{cls.__module__}.{cls.__name__}.{field}"
        for cls in models
        for field, info in cls.model_fields.items()
        if not info.description
    )
    assert undescribed == [], "describe these fields with Field(description=...)"
