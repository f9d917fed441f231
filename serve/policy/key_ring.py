"""The keys a replica checks, kept current while it serves: a ``key_file`` key (a mounted Secret)
is read again every ``KEY_FILE_CHECK_S``, so rotating or revoking it applies within seconds and
restarts nothing; keys from environment variables arrive as the deployments' ``user_config``
(``deploy_app.py --address``), which Serve hands running replicas without a restart."""

from __future__ import annotations

import time

from configs.api_keys import APIKey

KEY_FILE_CHECK_S = 2.0


class KeyRing:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._configured: tuple[APIKey, ...] | None = None
        self._current: tuple[APIKey, ...] = ()
        self._read_at = 0.0

    def current(self, configured: tuple[APIKey, ...]) -> tuple[APIKey, ...]:
        """``configured`` (the settings' keys, which a reconfigure replaces) with each file's key
        as the file holds it now; a file gone or empty takes its key away."""
        now = self.clock()
        if configured is not self._configured or now - self._read_at >= KEY_FILE_CHECK_S:
            self._configured, self._read_at = configured, now
            self._current = tuple(k for key in configured if (k := key.reread()) is not None)
        return self._current
