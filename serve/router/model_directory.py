"""The router's models when each model is a Serve application of its own.

The router's ``args`` name no models, so adding, removing or changing one never restarts
the router: it reads the model applications' configs from the Serve controller (the configs
``serve deploy``, ``deploy_app.py`` or KubeRay applied) every ``REFRESH_S`` and rebuilds its
routes from them. A model application that names another router (``platform_app``) is not
this router's.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from common.config_errors import ConfigError
from common.rendered_apps import MODEL_APP_IMPORT_PATH
from configs import load_platform_config
from serve.router.routing import ModelRoute, config_routes
from serve.router.serve_controller import serve_controller

logger = logging.getLogger("ray.serve")

REFRESH_S = 2.0
# A read of the applied configs; a router's first read waits for a controller busy deploying.
READ_TIMEOUT_S = 30.0


class ModelDirectory:
    """Keeps ``routes`` (shared with the router app, updated in place) equal to what Serve runs."""

    def __init__(self, platform_app: str, routes: dict[str, ModelRoute], routers: int = 1):
        self.platform_app = platform_app
        self.routes = routes
        self.routers = routers  # the router's replicas, which share each deployment's capacity
        self._by_args: dict[str, dict[str, ModelRoute]] = {}  # routes built once per app config
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._refresh_forever())

    async def refresh(self) -> None:
        routes: dict[str, ModelRoute] = {}
        cache: dict[str, dict[str, ModelRoute]] = {}
        for name, args in (await _model_app_args()).items():
            if args.get("platform_app") != self.platform_app:
                continue
            key = json.dumps([name, args], sort_keys=True, default=str)
            if key not in self._by_args:
                try:
                    self._by_args[key] = config_routes(
                        load_platform_config(args), app_name=name, routers=self.routers
                    )
                except ConfigError as err:  # deploy_app refuses these; a hand-made config may not
                    logger.warning(
                        "model application %r has an invalid config, not routed: %s", name, err
                    )
                    continue
            cache[key] = self._by_args[key]
            routes.update(cache[key])
        self._by_args = cache
        if routes != self.routes:
            self.routes.clear()
            self.routes.update(routes)
            logger.info("routing to models: %s", ", ".join(sorted(routes)) or "none")

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await self.refresh()
            except Exception:  # the controller restarting: keep the last routes, try again
                logger.exception("could not read the model applications from Serve")


async def _model_app_args() -> dict[str, dict[str, Any]]:
    """``args`` of every model application in the Serve controller's applied config."""
    controller = await serve_controller()
    # bounded: while the head is down the call waits for a controller that is not there
    configs = await asyncio.wait_for(controller.get_app_configs.remote(), READ_TIMEOUT_S)
    return {
        name: dict(app.args or {})
        for name, app in configs.items()
        if app.import_path == MODEL_APP_IMPORT_PATH
    }
