"""``MultiModelRouter``: the Ray Serve ingress deployment that serves the router app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncGenerator
from typing import Any, Literal

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from common.engine_response import EngineResponse
from common.request_ids import current_request_id
from configs.open_api_models import VLLM_PROTOCOL_CAPABILITIES, InvalidRequest, parse_request
from configs.server_models import Capability
from serve.platform_status import ModelPhase, phases_by_model
from serve.policy.capacity import DeploymentCapacities
from serve.policy.key_limits import KeyLimits
from serve.policy.request_policy import RequestPolicy, guarded
from serve.router.app import router_policy
from serve.router.errors import APIError
from serve.router.model_directory import ModelDirectory
from serve.router.replica_watch import NoReplica, ReplicaWatch, replica_actors, routable_replicas
from serve.router.routing import ModelRoute, RouterSettings
from serve.router.serve_controller import CONTROLLER_TIMEOUT_S, serve_controller

logger = logging.getLogger("ray.serve")
PHASES_TTL_S = 2.0
SERVING_STATES = ("HEALTHY", "UPSCALING", "DOWNSCALING")  # at least one replica running
REPLACEMENT_RETRY_AFTER_S = (
    5  # a dead replica's replacement takes seconds (vision) to a minute (vLLM)
)


class ServeEngineCaller:
    """Reaches engine deployments through Serve handles (Serve picks the replica): the bound
    ones of a one-application platform, else each model application's own deployment."""

    def __init__(
        self,
        handles: dict[str, DeploymentHandle] | None,
        app_name: str = "",
        capacities: DeploymentCapacities | None = None,
    ):
        self.handles = dict(handles or {})
        self.app_name = app_name  # the router's application, which holds the bound engines
        # the request policy's counts of this process: a stats probe takes a free slot or none
        self.capacities = capacities or DeploymentCapacities()
        self.watches: dict[str, ReplicaWatch] = {}
        self._phases: tuple[float, dict[str, ModelPhase]] | None = (
            None  # (read at, phases by model)
        )

    def _deployment(self, route: ModelRoute) -> DeploymentHandle:
        if route.app_name is None:  # bound into the router's application
            return self.handles[route.deployment_name]
        key = f"{route.app_name}/{route.deployment_name}"
        if key not in self.handles:
            self.handles[key] = serve.get_deployment_handle(
                route.deployment_name, app_name=route.app_name
            )
        return self.handles[key]

    def _handle(self, route: ModelRoute, stream: bool = False) -> DeploymentHandle:
        # A variant goes to replicas that already hold it (Serve's multiplexed routing).
        return self._deployment(route).options(
            stream=stream, multiplexed_model_id=route.variant or ""
        )

    async def _check_before_waking(
        self, route: ModelRoute, capability: Capability, body: dict
    ) -> None:
        """A 400 here for a malformed body to a model scaled to zero with no replica running,
        checked with the engine's own rules (vLLM's protocol models), instead of a replica
        started (tens of seconds of a cold vLLM engine) only to refuse it. A running replica
        parses the body itself, as on every other request."""
        if route.min_replicas != 0 or capability not in VLLM_PROTOCOL_CAPABILITIES:
            return
        if routable_replicas(self._deployment(route)):
            return
        try:  # in a thread: the first call imports vLLM's protocol modules (seconds)
            await asyncio.to_thread(parse_request, capability, body)
        except InvalidRequest as err:
            raise APIError.from_input(err) from None

    async def call(self, route: ModelRoute, capability: Capability, body: dict) -> EngineResponse:
        """The engine's answer. The request policy's timeout cancels the call when it is spent
        (as it does when the client leaves): Serve cancels the replica's work."""
        await self._check_before_waking(route, capability, body)
        for retry in (False, True):
            response = self._handle(route).handle.remote(
                route.engine_model_id, capability.value, body, current_request_id.get()
            )
            try:
                with _unavailable_as_503(route.deployment_name):
                    return await self._answer(route, response)
            except RayActorError as exc:  # the replica died before answering; Serve has dropped it
                if retry:
                    raise _replica_failed(route) from exc
            except BaseException:  # cancelled (timed out, the client left): stop the engine's work
                response.cancel()
                raise
        raise AssertionError("unreachable: the second try returns or raises")

    async def stream(
        self, route: ModelRoute, capability: Capability, body: dict
    ) -> AsyncGenerator[str | EngineResponse, None]:
        await self._check_before_waking(route, capability, body)
        for retry in (False, True):
            response = self._handle(route, stream=True).handle_stream.remote(
                route.engine_model_id, capability.value, body, current_request_id.get()
            )
            try:
                with _unavailable_as_503(route.deployment_name):
                    first = await self._answer(route, anext(response, None))
                break
            except (
                RayActorError
            ) as exc:  # died before the first chunk: nothing was sent, try another
                response.cancel()
                if retry:
                    raise _replica_failed(route) from exc
            except BaseException:
                response.cancel()
                raise
        try:
            if first is None:
                return
            yield first
            async for item in response:
                yield item
        finally:
            response.cancel()

    async def _answer(self, route: ModelRoute, awaitable):
        """The engine's answer (a stream's first item); a 503 at once, instead of a wait in Serve's
        queue, while a model that keeps replicas has none running (its only one died and Serve
        is starting another). A model that scales to zero waits for the replica it starts."""
        if route.min_replicas == 0:
            return await awaitable
        key = f"{route.app_name}/{route.deployment_name}"
        watch = self.watches.get(key) or self.watches.setdefault(
            key, ReplicaWatch(self._deployment(route))
        )
        try:
            return await watch.answer(awaitable)
        except NoReplica:
            raise APIError(
                503,
                f"{route.deployment_name} has no running replica (one is starting); retry shortly",
                code="model_unavailable",
                headers={"Retry-After": str(REPLACEMENT_RETRY_AFTER_S)},
            ) from None

    async def status(self, route: ModelRoute, timeout_s: float) -> dict | None:
        """Ready (not None) when Serve's controller reports the deployment serving: state that
        does not queue behind the engine's requests, so a busy model stays ready. The replica's
        own stats join in when one answers within ``timeout_s``; while the deployment is
        starting or updating, that answer alone decides."""
        state, stats = await asyncio.gather(
            self._controller_state(route), self._stats(route, timeout_s)
        )
        if state in SERVING_STATES:
            return {"deployment_status": state, **(stats or {"stats": "busy"})}
        if state is None or state == "UPDATING":  # no word from the controller, or a rollout
            return None if stats is None else {"deployment_status": state, **stats}
        return None  # UNHEALTHY, DEPLOY_FAILED

    async def phases(self) -> dict[str, ModelPhase]:
        """Each model's phase (waiting, loading, ready, failed...) and replica counts from the Serve
        controller, read at most once per ``PHASES_TTL_S`` however often /ready is polled."""
        now = asyncio.get_running_loop().time()
        if self._phases is None or now - self._phases[0] > PHASES_TTL_S:
            try:
                self._phases = (now, await asyncio.to_thread(phases_by_model))
            except Exception:  # the controller is away: readiness still answers from the probes
                logger.warning("could not read the models' phases", exc_info=True)
                return {}
        return self._phases[1]

    async def _stats(self, route: ModelRoute, timeout_s: float) -> dict | None:
        """One replica's own counters, asked of its actor directly, as Serve's controller asks
        for routing stats: outside the deployment's request queue, so polling /ready never takes
        a user's place (a model of one running and one queued request refused users while
        probes sat in its queue). Before this process's Serve router knows the replicas, the
        call goes through the queue like a request, only while this process counts a slot of
        the deployment free, holding it; one that times out is cancelled, out of the queue."""
        handle = self._deployment(route)
        actors = replica_actors(handle)
        if actors is not None:
            if not actors:
                return None
            call = random.choice(actors).record_routing_stats.remote()
            try:
                return await asyncio.wait_for(call, timeout_s)
            except Exception:  # the replica busy past the timeout, or dying
                return None
        capacity = self.capacities.of(route, route.router_capacity)
        if capacity is not None and capacity.full:
            return None  # busy: the controller's state alone says it serves
        with capacity.admit() if capacity is not None else contextlib.nullcontext():
            response = handle.stats.remote()
            try:
                return await asyncio.wait_for(response, timeout_s)
            except Exception:  # not started, busy, or unhealthy
                response.cancel()
                return None

    async def _controller_state(self, route: ModelRoute) -> str | None:
        """The deployment's status as Serve's controller holds it (HEALTHY, UPSCALING, ...)."""
        from ray.serve._private.common import DeploymentStatusInfo
        from ray.serve.generated.serve_pb2 import DeploymentStatusInfo as DeploymentStatusInfoProto

        try:
            controller = await serve_controller()
            raw = await asyncio.wait_for(
                controller.get_deployment_status.remote(
                    route.deployment_name, route.app_name or self.app_name
                ),
                CONTROLLER_TIMEOUT_S,
            )
        except Exception:  # the controller restarting
            return None
        if raw is None:
            return None
        return DeploymentStatusInfo.from_proto(
            DeploymentStatusInfoProto.FromString(raw)
        ).status.value


def _replica_failed(route: ModelRoute) -> APIError:
    return APIError(
        503,
        f"{route.deployment_name}'s replica failed before answering; retry the request",
        code="model_unavailable",
        headers={"Retry-After": str(REPLACEMENT_RETRY_AFTER_S)},
    )


class _unavailable_as_503:
    """Map Serve's queue-full and no-replica errors to a 503 the client can retry."""

    def __init__(self, deployment: str):
        self.deployment = deployment

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:  # maps errors, never swallows one
        if isinstance(exc, BackPressureError):
            raise APIError(
                503,
                f"{self.deployment} is at capacity; retry shortly",
                code="server_busy",
                headers={"Retry-After": "1"},
            ) from exc
        if isinstance(exc, DeploymentUnavailableError):
            raise APIError(
                503,
                f"{self.deployment} has no replica available",
                code="model_unavailable",
                headers={"Retry-After": str(REPLACEMENT_RETRY_AFTER_S)},
            ) from exc
        return False


@serve.ingress()
class MultiModelRouter:
    """OpenAI-compatible ingress: one endpoint for every model in the config."""

    # Serve awaits an async constructor; mypy holds __init__ to returning None
    async def __init__(  # type: ignore[misc]
        self, settings: RouterSettings, engines: dict[str, DeploymentHandle] | None
    ):
        """``engines``: the bound engine deployments of a one-application platform; None when each
        model is its own application, found through Serve (``ModelDirectory``)."""
        self.settings = settings
        self.policy: RequestPolicy | None = None
        self.capacities = DeploymentCapacities()  # the policy's and the readiness probe's
        self.engines = ServeEngineCaller(
            engines, serve.get_replica_context().app_name, self.capacities
        )
        if engines is None:
            self.directory = ModelDirectory(
                serve.get_replica_context().app_name, settings.routes, settings.router_replicas
            )
            await self.directory.start()

    def __serve_build_asgi_app__(self):
        limits = KeyLimits(self.settings.platform_app or serve.get_replica_context().app_name)
        self.policy = router_policy(self.settings, self.engines, limits, self.capacities)
        return guarded(self.policy)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """The API keys as ``deploy_app.py`` last sent them (``user_config``): applied to the
        running replica, which restarts nothing."""
        self.settings = self.settings.with_user_config(user_config)
        if self.policy is not None:
            self.policy.settings = self.settings
