"""JSON Schema of a ``type: vllm`` model's ``engine_kwargs``: vLLM's own engine arguments, with
the types the loader checks them by (``configs.vllm_models.vllm_engine_kwargs_model``), vLLM's
defaults and vLLM's help. Part of the config file's schema (``builders.config_schema``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic_core import to_jsonable_python

from configs.vllm_models import installed_vllm, vllm_engine_kwargs_model

# Where the schema sits in the config's schema: its nested configs' refs point inside it, so it is
# one self-contained piece (and none of vLLM's names, such as LoggingConfig, meet Serve's).
VLLM_KWARGS = "VLLMEngineKwargs"

# Sentences vLLM's help appends for its command line only: a YAML mapping takes no JSON string
# and no "1k" (read from vLLM 0.32.0's vllm/engine/arg_utils.py, _compute_kwargs).
_CLI_ONLY_HELP = ("Should either be a valid JSON string or JSON keys passed individually.",)


def vllm_kwargs_schema() -> dict[str, Any] | None:
    """The schema of vLLM's engine arguments as installed here; None where vLLM is not."""
    vllm = installed_vllm()
    if vllm is None:
        return None
    from vllm.engine.arg_utils import AsyncEngineArgs

    schema = vllm_engine_kwargs_model().model_json_schema(
        ref_template=f"#/$defs/{VLLM_KWARGS}/$defs/{{model}}"
    )
    helps = _help_texts()
    fields = {field.name: field for field in dataclasses.fields(AsyncEngineArgs)}
    for name, prop in schema["properties"].items():
        prop.pop("default", None)  # the loader's model defaults every field to None: not vLLM's
        default = _default(fields[name])
        if default is not _NO_DEFAULT:
            prop["default"] = default
        if helps.get(name):
            prop["description"] = helps[name]
    schema["description"] = (
        f"vLLM's engine arguments ({vllm}), as `vllm serve` takes them without the dashes; "
        "model and served_model_name come from model_loading_config"
    )
    schema["$comment"] = vllm  # which vLLM the committed schema was generated with
    return schema


_NO_DEFAULT = object()


def _default(field: dataclasses.Field) -> Any:
    """vLLM's default as JSON, or _NO_DEFAULT for a nested config (its own schema gives each of
    its fields' defaults) and a value JSON cannot show."""
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is dataclasses.MISSING or dataclasses.is_dataclass(
        field.default_factory
    ):
        return _NO_DEFAULT
    else:
        value = field.default_factory()
    if dataclasses.is_dataclass(value):
        return _NO_DEFAULT
    try:
        return to_jsonable_python(value)
    except Exception:  # a value of a type pydantic cannot serialise (torch.dtype, ...)
        return _NO_DEFAULT


def _help_texts() -> dict[str, str]:
    """Each engine argument's help, as `vllm serve --help` prints it.

    vLLM reads its config classes' attribute docstrings only when the command line asks for help
    (``NEEDS_HELP``, computed at import; ``_compute_kwargs`` caches per class): both are reset
    around building its parser (read from vLLM 0.32.0's vllm/engine/arg_utils.py)."""
    from vllm.engine import arg_utils
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    was = arg_utils.NEEDS_HELP
    arg_utils.NEEDS_HELP = True
    arg_utils._compute_kwargs.cache_clear()
    try:
        parser = arg_utils.AsyncEngineArgs.add_cli_args(FlexibleArgumentParser())
    finally:
        arg_utils.NEEDS_HELP = was
        arg_utils._compute_kwargs.cache_clear()
    parsers = (arg_utils.human_readable_int, arg_utils.human_readable_int_or_auto)
    cli_only = _CLI_ONLY_HELP + tuple(parse.__doc__ for parse in parsers if parse.__doc__)
    helps = {}
    for action in parser._actions:
        text = (action.help or "").replace("%%", "%")  # argparse's escape
        for sentence in cli_only:
            text = text.replace(f"\n\n{sentence}", "")
        helps[action.dest] = text.strip()
    return helps
