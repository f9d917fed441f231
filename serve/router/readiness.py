"""``/ready``: each model's and pipeline's state, answered from a snapshot that a background task
refreshes at most once per ``REFRESH_EVERY_S`` while callers keep asking. A refresh asks every
engine for its stats and Serve's controller for the phases, so load balancers polling often, or
many callers at once, cost the platform one such round a second however many calls there are."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import JSONResponse

from common.rendered_apps import CONFIG_FILE_ENV
from serve.platform_status import READY, UNAVAILABLE, ModelPhase
from serve.policy.auth import request_key, visible
from serve.router.pipelines import pipeline_state
from serve.router.redaction import redacted_model_state
from serve.router.routing import ModelRoute, RouterSettings, deployment_states, model_state

logger = logging.getLogger("ray.serve")

REFRESH_EVERY_S = 1.0
IDLE_AFTER_S = 30.0  # no call for this long: refreshing stops; the next call waits for a fresh one


class EngineStates(Protocol):
    """The part of the app's engine caller that reports state."""

    async def status(self, route: ModelRoute, timeout_s: float) -> dict | None: ...

    async def phases(self) -> dict[str, ModelPhase]: ...


@dataclass(frozen=True)
class Snapshot:
    """Every model's and pipeline's state, whoever asks; each call shows its key's part of it."""

    models: dict[str, dict[str, Any]]  # by model id: base models, their variants go with them
    pipelines: dict[str, dict[str, Any]]  # by pipeline id
    taken_at: float  # wall-clock start of the read: the snapshot shows what happened before it


class Readiness:
    def __init__(self, settings: RouterSettings, engines: EngineStates):
        self.settings, self.engines = settings, engines
        self._latest: Snapshot | None = None
        self._first: asyncio.Future[Snapshot] | None = None  # the first snapshot of a refresher
        self._refresher: asyncio.Task | None = None
        self._asked_at = 0.0

    async def answer(self, request: Request) -> JSONResponse:
        """The part of the latest snapshot the request's key may see; 503 unless all of it is
        ready. Callers other than an admin see no process, actor or node ids (a platform with no
        keys shows everything: it is for local use)."""
        snapshot = await self.snapshot()
        key = request_key(request)
        shown = redacted_model_state if key is not None and not key.admin else dict
        # a model added since the snapshot joins at the next refresh (within a second)
        models = {
            m: shown(snapshot.models[m])
            for m in visible(request, self._bases())
            if m in snapshot.models
        }
        chains = {p: snapshot.pipelines[p] for p in visible(request, self.settings.pipelines)}
        ready = all(m["ready"] for m in models.values()) and all(
            chain["ready"] for chain in chains.values()
        )
        return JSONResponse(
            {
                "status": "ready" if ready else "not_ready",
                "models": models,
                "pipelines": chains,
                "config_file": os.environ.get(CONFIG_FILE_ENV),
                "as_of": snapshot.taken_at,
            },
            status_code=200 if ready else 503,
        )

    def _bases(self) -> dict[str, ModelRoute]:
        """The models (not their variants) as the router knows them now: the model directory
        adds and removes routes as model applications come and go."""
        return {m: r for m, r in self.settings.routes.items() if r.variant is None}

    async def snapshot(self) -> Snapshot:
        """The latest snapshot; the first call in ``IDLE_AFTER_S`` starts the refresher and waits
        for its first one."""
        loop = asyncio.get_running_loop()
        self._asked_at = loop.time()
        # a refresher of another event loop: one a test client ran before this request's
        if (
            self._refresher is None
            or self._refresher.done()
            or self._refresher.get_loop() is not loop
        ):
            self._latest, self._first = None, loop.create_future()
            self._refresher = loop.create_task(self._refresh_while_asked(self._first))
        if self._latest is not None:
            return self._latest
        assert self._first is not None
        return await asyncio.shield(self._first)  # a caller leaving cancels only its own wait

    async def _refresh_while_asked(self, first: asyncio.Future[Snapshot]) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() - self._asked_at < IDLE_AFTER_S:
            started = loop.time()
            try:
                snapshot = await self._read()
            except Exception as error:
                if not first.done():  # its callers get the error; the next call starts anew
                    first.set_exception(error)
                    return
                logger.warning(
                    "could not refresh /ready; answering from the last state", exc_info=True
                )
            else:
                self._latest = snapshot
                if not first.done():
                    first.set_result(snapshot)
            await asyncio.sleep(max(0.0, started + REFRESH_EVERY_S - loop.time()))

    async def _read(self) -> Snapshot:
        """Every deployment's stats and every model's phase, as /ready shows them."""
        taken_at = time.time()
        # the controller's phases say why a model is not ready and count its replicas
        states, phases = await asyncio.gather(
            deployment_states(self.engines, self.settings.routes.values()), self.engines.phases()
        )
        models = {
            model_id: _model_entry(model_id, states[route.deployment_name], phases.get(model_id))
            for model_id, route in self._bases().items()
        }
        pipelines = {
            name: pipeline_state(p, self.settings.routes, states)
            for name, p in self.settings.pipelines.items()
        }
        return Snapshot(models, pipelines, taken_at)


def _model_entry(model_id: str, state: dict | None, phase: ModelPhase | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "ready": state is not None,
        "phase": READY,
        **model_state(model_id, state),
    }
    if phase is not None:
        entry.update(
            phase=entry["phase"] if entry["ready"] else phase.phase,
            phase_detail=phase.detail,
            replicas={
                "running": phase.replicas_running,
                "target": phase.replicas_target,
                "nodes": list(phase.replica_nodes),
            },
        )
    elif not entry["ready"]:
        entry.update(phase=UNAVAILABLE, phase_detail="no replica answered")
    return entry
