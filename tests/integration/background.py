"""Work the session starts ahead of the tests that need it, so that it overlaps other tests: the
session platform starts while the unit tests run, and the batch jobs run while the other
integration tests do (on 2 cores a platform's start and a job's engine start are seconds of
waiting as much as of work)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")


Enter = Callable[[threading.Event], contextlib.AbstractContextManager[T]]


class InBackground(Generic[T]):
    """A context manager entered on a thread of its own: ``result()`` waits for what it yields
    (or raises what its entry raised); ``close()`` exits it and raises what its exit raised. Used
    in a ``with``, it is entered with ``result()`` and left with ``close()``. The
    entry gets the event that ``close()`` sets, so that a run stopped early (Ctrl-C, ``-x``) need
    not wait for the entry to finish first."""

    def __init__(self, enter: Enter[T], name: str):
        self._value: Future[T] = Future()
        self._leave = threading.Event()
        self._exit_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(enter,), name=name, daemon=True)
        self._thread.start()

    def _run(self, enter: Enter[T]) -> None:
        try:
            with enter(self._leave) as value:
                self._value.set_result(value)
                self._leave.wait()
        except BaseException as error:
            if self._value.done():
                self._exit_error = error
            else:
                self._value.set_exception(error)

    def result(self) -> T:
        return self._value.result()

    def __enter__(self) -> T:
        return self.result()

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Idempotent: the first call waits for the exit; later ones return at once."""
        self._leave.set()
        self._thread.join()
        error, self._exit_error = self._exit_error, None
        if error is not None:
            raise error
