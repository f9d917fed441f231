"""The code shipped as a working_dir: reproducible, complete, and paths that survive the move."""

import zipfile
from io import BytesIO
from pathlib import Path

from builders.shipped_code import CODE, absolute_paths, code_zip, with_shipped_code, working_dir_uri
from common.rendered_apps import PLATFORM_IMPORT_PATH

ROOT = Path(__file__).resolve().parents[2]


def test_the_zip_holds_the_importable_code_and_nothing_else():
    names = zipfile.ZipFile(BytesIO(code_zip())).namelist()
    assert (
        "deploy_app.py" in names
        and "builders/app_builder.py" in names
        and "servers/vllm_engine.py" in names
    )
    assert {name.split("/")[0] for name in names} == set(CODE)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_the_zip_depends_only_on_the_code(tmp_path):
    first = working_dir_uri(str(tmp_path))
    assert (
        working_dir_uri(str(tmp_path)) == first
    )  # same code, same zip, same URI: Serve restarts nothing
    assert first.startswith(f"file://{tmp_path}/rayserve-platform-") and first.endswith(".zip")
    assert [p.name for p in tmp_path.iterdir()] == [first.rsplit("/", 1)[1]]


def test_a_uri_is_used_as_it_is(tmp_path):
    assert (
        working_dir_uri("s3://bucket/code/rayserve-platform-0123.zip")
        == "s3://bucket/code/rayserve-platform-0123.zip"
    )


def test_relative_paths_that_exist_become_absolute(tmp_path):
    (tmp_path / "models" / "chat").mkdir(parents=True)
    args = {
        "models": [
            {"model_loading_config": {"model_source": "./models/chat", "model_id": "./not-a-file"}},
            {
                "multiplex": {
                    "variants": {"a": "../" + tmp_path.name + "/models/chat", "b": "org/hub-id"}
                }
            },
        ]
    }
    result = absolute_paths(args, tmp_path)
    assert result["models"][0]["model_loading_config"] == {
        "model_source": f"{tmp_path}/models/chat",
        "model_id": "./not-a-file",
    }
    assert result["models"][1]["multiplex"]["variants"] == {
        "a": f"{tmp_path}/models/chat",
        "b": "org/hub-id",
    }


def test_only_platform_applications_get_the_working_dir():
    raw = {
        "applications": [
            {
                "name": "platform",
                "import_path": PLATFORM_IMPORT_PATH,
                "runtime_env": {"env_vars": {"X": "1"}},
                "args": {},
            },
            {"name": "other", "import_path": "their.app:build", "args": {}},
        ]
    }
    shipped = with_shipped_code(raw, "file:///shared/code.zip", PLATFORM_IMPORT_PATH)
    assert shipped["applications"][0]["runtime_env"] == {
        "env_vars": {"X": "1"},
        "working_dir": "file:///shared/code.zip",
    }
    assert "runtime_env" not in shipped["applications"][1]
    assert "working_dir" not in raw["applications"][0]["runtime_env"]  # the input is left as it was
