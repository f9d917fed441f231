"""Serve's log handlers kept working through a library that applies its own logging config.

vLLM applies its config with ``logging.config.dictConfig`` when its engine starts, and a
non-incremental ``dictConfig`` closes every handler in the process. Serve buffers a replica's log
through a ``MemoryHandler``, whose ``close`` drops its target: from then on the replica's log file
gets nothing, and Serve's ``is_allocated`` (which reads that target's file name) raises. The
controller calls it on every replica it recovers after a restart of the head, so each vLLM replica
was stopped and started again, cold, instead of being recovered.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
from collections.abc import Iterator


@contextlib.contextmanager
def log_handlers_kept() -> Iterator[None]:
    """Whatever runs inside may close the process's handlers: each buffering handler gets its
    target back (a closed file handler opens its file again on its next record)."""
    targets = {handler: handler.target for handler in _memory_handlers() if handler.target}
    try:
        yield
    finally:
        for handler, target in targets.items():
            if handler.target is None:
                handler.target = target


def _memory_handlers() -> list[logging.handlers.MemoryHandler]:
    loggers = [logging.getLogger()] + [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    return [
        handler
        for logger in loggers
        for handler in logger.handlers
        if isinstance(handler, logging.handlers.MemoryHandler)
    ]
