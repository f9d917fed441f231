"""The documentation's code runs: every shell and Python block of the README's quick start and
"Calling it", and of the docs pages' sections that show commands and calls (``COMMANDS``,
``CALLS``), taken from the files as they are now, against the session platform.

The blocks call ``127.0.0.1:8000`` with no key (the default config has none); the session
platform listens elsewhere and requires one. So the test points the snippets at the session's
address and gives them its key the way each tool takes a default: curl from a ``.curlrc`` (with
``--fail-with-body``, so an HTTP error fails the command), the openai client through the key in its
constructor, tritonclient through its request headers. The files the snippets name (``cat.jpg``,
``speech.mp3``, ...) are made in the directory they run in.

A command that starts, stops or edits a platform cannot run beside the session's: each such line
of the quick start names the test that covers it (``ELSEWHERE``); a line that is in neither list
fails the test, so a new README command gets a test before it lands.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.audio_files import audio_file
from tests.integration.helpers import API_KEY, ROOT
from tests.media_files import image_file, video_file

README = ROOT / "README.md"
DOCS = ROOT / "docs"
# Where the snippets are: (file, the heading of its section)
COMMANDS = [(README, "Quick start"), (DOCS / "quickstart.md", "The command line")]
CALLS = [
    (README, "Calling it"),
    (DOCS / "quickstart.md", "First request"),
    (DOCS / "api.md", "Examples"),
]
DEFAULT_ADDRESS = "127.0.0.1:8000"
# Quick-start commands that start, edit or stop a platform, or start a Ray of their own (what the
# command is, comments left out -> the test that runs it).
ELSEWHERE = {
    r"scripts/serve\.sh.*": "the session platform, which scripts/serve.sh starts",
    r"scripts/test\.sh.*": "this suite: CI runs it through .ci/run",
    r"source \.venv/bin/activate": "every test: each runs in .venv",
    r"python deploy_app\.py --config model_config\.yaml": "the session platform",
    r"python deploy_app\.py --config model_config\.yaml --address auto.*": "test_reconfigure.py",
    r"python deploy_app\.py batch .*": "test_batch.py",
    r"serve run \S+": "test_serve_cli.py",
    r"scripts/build_image\.sh .*": "test_container_image.py (tier 3), which builds the image",
    r"podman run --shm-size 1g -p 127\.0\.0\.1:8000:8000 \S+": "test_container_image.py, runs it",
}


def _blocks(path: Path, title: str, language: str) -> list[str]:
    """The ``language`` code blocks of the section headed ``title`` (at any level) in ``path``, up
    to the next heading of its level or above (a comment line in a code block is no heading)."""
    body: list[str] = []
    level, fenced = 0, False
    for line in path.read_text().splitlines(keepends=True):
        heading = None if fenced else re.fullmatch(r"(#+) (.*)\n?", line)
        fenced ^= line.startswith("```")
        if heading and level and len(heading[1]) <= level:
            break
        if level:
            body.append(line)
        elif heading and heading[2] == title:
            level = len(heading[1])
    assert level, f"{path.relative_to(ROOT)} has no section {title!r}"
    return re.findall(rf"```{language}\n(.*?)```", "".join(body), flags=re.S)


def _name(snippets: tuple[Path, str]) -> str:
    return f"{snippets[0].relative_to(ROOT)}: {snippets[1]}"


def _commands(block: str) -> list[str]:
    """The block's commands: continuation lines joined, comments kept (the shell drops them)."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [
        line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")
    ]


def _covered_elsewhere(command: str) -> str | None:
    words = " ".join(shlex.split(command, comments=True))
    return next((test for pattern, test in ELSEWHERE.items() if re.fullmatch(pattern, words)), None)


@pytest.fixture(scope="module")
def workdir(platform, tmp_path_factory) -> Path:
    """A directory holding the files the snippets name, and a .curlrc with the session's key."""
    directory = tmp_path_factory.mktemp("readme")
    (directory / "cat.png").write_bytes(image_file("PNG", seed=1))
    (directory / "cat.jpg").write_bytes(image_file("JPEG", seed=2))
    (directory / "speech.mp3").write_bytes(audio_file("mp3", "libmp3lame", seconds=1.5))
    (directory / "question.wav").write_bytes(audio_file("wav", "pcm_s16le", seconds=1.5))
    (directory / "clip.mp4").write_bytes(video_file())
    for entry in ROOT.iterdir():  # the repository, for the quick start's relative paths
        if not entry.name.startswith(".") or entry.name in (".models", ".venv"):
            (directory / entry.name).symlink_to(entry)
    (directory / ".curlrc").write_text(
        f'header = "Authorization: Bearer {API_KEY}"\nfail-with-body\nshow-error\n'
    )
    return directory


def _run(command: str, cwd: Path, address: str, timeout: float = 300) -> None:
    done = subprocess.run(
        ["bash", "-c", command.replace(DEFAULT_ADDRESS, address)],
        cwd=cwd,
        env={**_env(), "CURL_HOME": str(cwd)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def test_the_quick_start_commands_run_or_name_the_test_that_runs_them(platform, workdir):
    owned = platform.require_owned()
    blocks = []
    for path, title in COMMANDS:
        found = _blocks(path, title, "bash")
        assert found, f"{_name((path, title))} shows no commands"
        blocks += found
    ran, elsewhere = [], []
    for command in (c for block in blocks for c in _commands(block)):
        if _covered_elsewhere(command):
            elsewhere.append(command)
            continue
        ran.append(command)
        # in a directory that links to the repository's files (`--render > serve_config.yaml`
        # writes there); `status` finds the session's Ray through its temp dir, as on a user's
        # machine
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=workdir,
            env={**owned.env, "PATH": _env()["PATH"]},
            capture_output=True,
            text=True,
            timeout=300,
        )
        # --plan's last command shows a replica that cannot fit: exit 1, as the README says
        expected = 1 if "--plan" in command and "exit 1" in command else 0
        assert done.returncode == expected, (command, done.stdout[-2000:], done.stderr[-2000:])
    assert ran and elsewhere, (ran, elsewhere)


@pytest.mark.parametrize("snippets", CALLS, ids=_name)
def test_the_calls_answer(platform, workdir, snippets):
    """A section's blocks run as one shell script, as a reader pastes them (later blocks use
    ``$IMG``)."""
    address = urlparse(platform.url).netloc
    blocks = _blocks(*snippets, "bash")
    assert blocks, f"{_name(snippets)} shows no calls"
    _run("set -ex\n" + "\n".join(blocks), workdir, address)


def test_the_python_calls_run(platform, workdir):
    address = urlparse(platform.url).netloc
    blocks = [block for path, title in CALLS for block in _blocks(path, title, "python")]
    assert len(blocks) >= 3, "the Python examples are gone"
    # tritonclient takes headers per call: the session's key goes in as its default
    key_for_triton = (
        "import tritonclient.http as _triton\n"
        "_infer = _triton.InferenceServerClient.infer\n"
        "_triton.InferenceServerClient.infer = lambda self, *a, headers=None, **k: _infer(\n"
        "    self, *a, headers={**(headers or {}), 'Authorization': KEY}, **k)\n"
    ).replace("KEY", repr(f"Bearer {API_KEY}"))
    for block in blocks:
        code = block.replace(DEFAULT_ADDRESS, address).replace("unused-unless-configured", API_KEY)
        script = workdir / "snippet.py"
        script.write_text(key_for_triton + code)
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, (block, done.stdout[-2000:], done.stderr[-2000:])
