"""A buffering handler (as Serve's replica logger has) survives a library's dictConfig. Run in a
child process: a non-incremental dictConfig closes every handler of the process, pytest's too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCENARIO = """
import logging, logging.config, logging.handlers, sys
from common.kept_log_handlers import log_handlers_kept

VLLM_LIKE = {  # as vLLM's: non-incremental, existing loggers left enabled
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"library": {"class": "logging.StreamHandler"}},
    "loggers": {"library": {"handlers": ["library"], "level": "INFO", "propagate": False}},
}
path = sys.argv[1]
logger = logging.getLogger("replica")
logger.setLevel(logging.INFO)
buffered = logging.handlers.MemoryHandler(1, target=logging.FileHandler(path))
logger.addHandler(buffered)

logging.config.dictConfig(VLLM_LIKE)
print("target after dictConfig:", buffered.target)

buffered.target = logging.FileHandler(path)
with log_handlers_kept():
    logging.config.dictConfig(VLLM_LIKE)
print("target kept:", type(buffered.target).__name__)
logger.info("after the engine started")
buffered.flush()
"""


def test_dict_config_drops_the_target_and_the_context_puts_it_back(tmp_path):
    log = tmp_path / "replica.log"
    result = subprocess.run(
        [sys.executable, "-c", SCENARIO, str(log)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    # without the context, the target is gone (what broke Serve's is_allocated on recovery)
    assert "target after dictConfig: None" in result.stdout
    assert "target kept: FileHandler" in result.stdout
    assert "after the engine started" in log.read_text()
