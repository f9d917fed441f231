"""The layers contract in ``pyproject.toml`` (import-linter) bites: ``lint-imports`` passes on a
copy of the code, and fails on the same copy once a lower layer imports a higher one."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("batch", "builders", "serve", "servers", "cloud", "configs", "common")
CONTRACT = "Layers: a module imports only from its own layer or the ones below"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _not_python(directory: str, names: list[str]) -> list[str]:
    return [
        name
        for name in names
        if name == "__pycache__" or not (name.endswith(".py") or Path(directory, name).is_dir())
    ]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The packages' Python files, ``deploy_app.py`` and ``pyproject.toml``, nothing else."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=_not_python)
    for name in ("deploy_app.py", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS} is missing: pip install -r requirements-dev.txt"
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_code_keeps_the_layers(tree):
    done = lint_imports(tree)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{CONTRACT} KEPT" in done.stdout


@pytest.mark.parametrize(
    "module, line, broken",
    [
        ("common/__init__.py", "import serve", "common is not allowed to import serve"),
        ("configs/api_keys.py", "import cloud.storage", "configs is not allowed to import cloud"),
        # deploy_app is a module, not a package: an import of it counts from the first one
        ("servers/__init__.py", "import deploy_app", "servers is not allowed to import deploy_app"),
    ],
)
def test_an_import_of_a_higher_layer_breaks_the_contract(tree, module, line, broken):
    with open(tree / module, "a") as source:
        source.write(f"\n{line}\n")
    done = lint_imports(tree)
    assert done.returncode != 0
    assert f"{CONTRACT} BROKEN" in done.stdout, done.stdout + done.stderr
    assert broken in done.stdout


def test_the_readme_shows_the_contracts_order():
    import tomllib

    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = [layer.strip("()") for layer in contract["contracts"][0]["layers"]]
    shown = " > ".join(["deploy_app.py", *layers[1:]])
    assert layers[0] == "deploy_app" and f"\n{shown}\n" in (ROOT / "README.md").read_text()
