"""vLLM engine: ``AsyncLLM`` plus vLLM's own OpenAI serving layer, inside a Serve replica.

Using vLLM's serving classes (the ones ``vllm serve`` uses) keeps chat templates,
sampling parameters, structured output, streaming chunks and usage identical to vLLM's
server; this class only adapts their results to the ``EngineResponse`` convention.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncGenerator
from typing import Any

from starlette.datastructures import State
from starlette.responses import Response, StreamingResponse

from cloud.storage import resolve_model_source
from common.engine_response import EngineResponse
from common.kept_log_handlers import log_handlers_kept
from common.request_ids import current_request_id, engine_request_id
from common.serve_env import setting
from common.streaming import coalesce
from configs.open_api_models import InvalidRequest, parse_request
from configs.server_models import Capability
from configs.vllm_models import VLLMModelEntry, vllm_engine_kwargs_model
from servers.base_engine import BaseEngine
from servers.vllm_cpu_placement import (
    bind_cpu_shards,
    engine_core_beside_worker,
    worker_inside_engine_core,
)
from servers.vllm_prefix_cache import PrefixCacheTally

logger = logging.getLogger(__name__)

# vLLM on the CPU otherwise reserves most of NUMA node 0's memory for its KV cache.
DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30
DEFAULT_MAX_N = 128  # OpenAI's own limit on ``n``, where the YAML sets no max_num_seqs
NO_FETCH_DOMAIN = "media-fetching-disabled.invalid"  # RFC 6761: .invalid never resolves
STREAM_INTERVAL_S = float(setting("PLATFORM_STREAM_INTERVAL_MS")) / 1000


class VLLMEngine(BaseEngine):
    entry: VLLMModelEntry

    def __init__(self, entry: VLLMModelEntry):
        super().__init__(entry)
        self._exit_stack = contextlib.AsyncExitStack()
        self.state = State()
        self.http_app: Any = None  # vLLM's own OpenAI app (``vllm serve``'s), for the one-hop path
        self.engine_client: Any = None
        self.streams_cancelled = 0
        self.requests_aborted = 0
        self.prefix_cache = PrefixCacheTally()  # vLLM's own counts, for this replica's stats

    async def start(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.app import build_app

        args = self._server_args()
        # vLLM applies its logging config on the way (common/kept_log_handlers.py)
        with log_handlers_kept():
            self.engine_client = await self._start_engine_client(
                AsyncEngineArgs.from_cli_args(args)
            )
        tasks = await self.engine_client.get_supported_tasks()
        # One set of serving objects answers both paths: the router's calls and vLLM's own app.
        self.http_app = build_app(args, tasks, self.engine_client.model_config)
        self.state = self.http_app.state
        await init_app_state(self.engine_client, self.state, args, tasks)
        self._check_pooling_task(self.engine_client.model_config.get_pooling_task(tasks))
        logger.info("vLLM engine for %s ready, tasks %s", self.entry.model_id, tasks)

    def _check_pooling_task(self, resolved: str | None) -> None:
        """The router's capability table comes from the YAML; refuse to start when vLLM, reading the
        model's architecture, made it something else (a cross-encoder declared as an embedder)."""
        declared = self.entry.pooling_task()
        if resolved == declared:
            return
        fix = (
            "engine_kwargs.runner: generate"
            if resolved is None
            else f"engine_kwargs.runner: pooling and convert: {resolved}"
        )
        raise ValueError(
            f"{self.entry.model_id}: vLLM serves this model as "
            f"{resolved or 'a generative model'}, "
            f"but the config declares {declared or 'a generative model'}; "
            f"set {fix}"
        )

    async def _start_engine_client(self, engine_args):
        """``AsyncLLM`` as vLLM's server builds it, but sharded inside the replica's placement
        group.

        vLLM's engine core runs in a child process, which is not in the replica's placement
        group: without the group handed over, its Ray workers would reserve GPUs a second time.
        On the CPU a single shard runs inside that process, and the engine core of several moves
        beside the first (``servers/vllm_cpu_placement.py``).
        """
        import ray
        from vllm.platforms import current_platform
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM
        from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

        vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
        group = ray.util.get_current_placement_group()
        if group is not None and vllm_config.parallel_config.distributed_executor_backend == "ray":
            vllm_config.parallel_config.placement_group = group
        cpu_placement: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if (
            current_platform.is_cpu()
            and "distributed_executor_backend" not in self.entry.engine_kwargs
        ):
            cpu_placement = worker_inside_engine_core(vllm_config)
        with cpu_placement:
            engine = AsyncLLM.from_vllm_config(
                vllm_config=vllm_config,
                usage_context=UsageContext.OPENAI_API_SERVER,
                enable_log_requests=engine_args.enable_log_requests,
                disable_log_stats=engine_args.disable_log_stats,
                # vLLM's engine metrics through Ray's metrics system (ray_vllm_* on every node's
                # endpoint)
                stat_loggers=(
                    None
                    if engine_args.disable_log_stats
                    else [RayPrometheusStatLogger, self.prefix_cache.stat_logger()]
                ),
            )
        self._exit_stack.callback(engine.shutdown, timeout=vllm_config.shutdown_timeout)
        if current_platform.is_cpu():
            engine_core_beside_worker()
        self._count_aborts(engine)
        await (
            engine.reset_mm_cache()
        )  # drop the dummy inputs of memory profiling, as vLLM's server does
        return engine

    def _count_aborts(self, engine) -> None:
        """Count vLLM's aborts (a client gone on either path: the router's stream or vLLM's own
        server), so health pages and tests can see that a disconnect stopped generation."""
        abort = engine.abort

        async def counted(request_id, *args, **kwargs):
            self.requests_aborted += 1
            return await abort(request_id, *args, **kwargs)

        engine.abort = counted

    def _server_args(self):
        """vLLM's server arguments with the YAML's ``engine_kwargs`` applied over its defaults."""
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
        from vllm.platforms import current_platform
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        source = resolve_model_source(self.entry.model_loading_config.model_source)
        args = make_arg_parser(FlexibleArgumentParser()).parse_args(["--model", source])
        kwargs = {**self.entry.engine_kwargs, **self.entry.engine_overrides()}
        if self.entry.world_size() > 1 and "distributed_executor_backend" not in kwargs:
            # Ray workers use the GPUs of the replica's placement group; vLLM's CPU build has no
            # Ray workers, so there the shards are local processes.
            kwargs["distributed_executor_backend"] = (
                "ray" if current_platform.ray_device_key else "mp"
            )
        if current_platform.is_cpu() and self.entry.world_size() > 1:
            bind_cpu_shards(self.entry.world_size())
        if (
            current_platform.is_cpu()
            and "kv_cache_memory_bytes" not in kwargs
            and "VLLM_CPU_KVCACHE_SPACE" not in os.environ
        ):
            kwargs["kv_cache_memory_bytes"] = DEFAULT_CPU_KV_CACHE_BYTES
        for key, value in _typed(kwargs).items():
            setattr(args, key, value)
        # One request's ``n`` (and ``best_of``) at most what the engine runs at once: vLLM's own
        # cap is 16384 sequences, hours of one engine for a single request.
        os.environ.setdefault(
            "VLLM_MAX_N_SEQUENCES", str(kwargs.get("max_num_seqs", DEFAULT_MAX_N))
        )
        args.served_model_name = [self.entry.model_id]
        # The engine fetches no media: the request policy (serve/policy) inlines what the
        # operator allows as data: URLs; vLLM refuses any URL outside these never-resolving names.
        args.allowed_media_domains = [NO_FETCH_DOMAIN]
        args.allowed_local_media_path = ""
        # vLLM's app allows every origin by default; the platform's CORS rules apply instead.
        args.allowed_origins = []
        args.lora_modules = self._lora_modules()
        # True: no vLLM engine metrics
        args.disable_log_stats = kwargs.get("disable_log_stats", False)
        return args

    def _lora_modules(self):
        """The YAML's variants as vLLM LoRA modules, named ``<model_id>:<variant>`` as clients
        ask."""
        from vllm.entrypoints.openai.models.protocol import LoRAModulePath

        return [
            LoRAModulePath(name=name, path=resolve_model_source(source))
            for name, source in self.entry.lora_modules().items()
        ] or None

    async def load_variant(self, name: str) -> BaseEngine:
        # Adapters were registered at start; vLLM loads their weights on first use and keeps
        # max_cpu_loras of them, so Serve's multiplexing only steers requests to warm replicas.
        return self

    async def check_health(self) -> None:
        await self.engine_client.check_health()

    def stats(self) -> dict[str, Any]:
        processor = self.engine_client.output_processor
        parallel = self.engine_client.vllm_config.parallel_config
        return {
            "unfinished_requests": processor.get_num_unfinished_requests(),
            "streams_cancelled": self.streams_cancelled,
            "requests_aborted": self.requests_aborted,
            "max_num_seqs": self.engine_client.vllm_config.scheduler_config.max_num_seqs,
            "tensor_parallel_size": parallel.tensor_parallel_size,
            "pipeline_parallel_size": parallel.pipeline_parallel_size,
            **self.prefix_cache.stats(),
        }

    async def handle(self, capability: Capability, body: dict[str, Any]) -> EngineResponse:
        result = await self._call_serving(capability, body)
        if isinstance(result, EngineResponse):
            return result
        if hasattr(result, "__aiter__"):  # a stream was asked of a non-streaming call
            return EngineResponse.error(
                400, "use a streaming call for stream: true", param="stream"
            )
        return await _to_engine_response(result)

    async def handle_stream(
        self, capability: Capability, body: dict[str, Any]
    ) -> AsyncGenerator[str | EngineResponse, None]:
        result = await self._call_serving(capability, body)
        if not hasattr(result, "__aiter__"):
            yield (
                result if isinstance(result, EngineResponse) else await _to_engine_response(result)
            )
            return
        try:
            async for chunk in coalesce(result, STREAM_INTERVAL_S):
                yield chunk
        except (asyncio.CancelledError, GeneratorExit):  # client gone: vLLM aborts the request
            self.streams_cancelled += 1
            raise

    async def _call_serving(self, capability: Capability, body: dict[str, Any]) -> Any:
        from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

        serve = self._serving_for(capability)
        if serve is None:
            return EngineResponse.error(
                400, f"model {self.entry.model_id!r} does not serve {capability.value}"
            )
        try:
            request = parse_request(capability, body)
            if (request_id := current_request_id.get()) and hasattr(request, "request_id"):
                request.request_id = engine_request_id(
                    request_id
                )  # in vLLM's logs: <prefix>-<client's id>
            return await serve(request, None)
        except InvalidRequest as err:
            return EngineResponse.error(400, err.message, param=err.param)
        except Exception as exc:  # vLLM raises its client errors; map them its own way
            error = create_error_response(exc)
            if error.error.code >= 500:
                logger.exception("engine error for %s", self.entry.model_id)
            return await _to_engine_response(error)

    def _serving_for(self, capability: Capability):
        """vLLM's serving callable for ``capability``, or None when this model lacks it."""
        chat = getattr(self.state, "openai_serving_chat", None)
        completion = getattr(self.state, "openai_serving_completion", None)
        tokenization = getattr(self.state, "serving_tokenization", None)
        table = {
            Capability.CHAT: chat and chat.create_chat_completion,
            Capability.COMPLETIONS: completion and completion.create_completion,
            Capability.EMBEDDINGS: getattr(self.state, "serving_embedding", None),
            Capability.RERANK: getattr(
                self.state, "serving_scores", None
            ),  # it tells rerank from score by the request
            Capability.SCORE: getattr(self.state, "serving_scores", None),
            Capability.CLASSIFY: getattr(self.state, "serving_classification", None),
            Capability.TOKENIZE: tokenization and tokenization.create_tokenize,
            Capability.DETOKENIZE: tokenization and tokenization.create_detokenize,
        }
        return table.get(capability)

    async def shutdown(self) -> None:
        await self._exit_stack.aclose()


# Starlette sets these for the body the router sends.
_BODY_HEADERS = {"content-type", "content-length"}


async def _to_engine_response(result: Any) -> EngineResponse:
    """vLLM answers with pydantic responses, ``ErrorResponse``s, or starlette responses: a streaming
    one for embeddings as raw bytes, whose JSON metadata (ids, usage) rides in a header."""
    if isinstance(result, StreamingResponse):
        parts = [
            part.encode() if isinstance(part, str) else bytes(part)
            async for part in result.body_iterator
        ]
        headers = {
            name: value for name, value in result.headers.items() if name not in _BODY_HEADERS
        }
        return EngineResponse(
            result.status_code,
            b"".join(parts),
            result.media_type or "application/octet-stream",
            headers,
        )
    if isinstance(result, Response):
        return EngineResponse(
            result.status_code, bytes(result.body), result.media_type or "application/json"
        )
    error = getattr(result, "error", None)
    if error is not None:  # vLLM's ErrorResponse
        return EngineResponse.error(error.code, error.message, error.type, error.param, error.code)
    return EngineResponse(200, result.model_dump_json().encode())


def _typed(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with each mapping turned into what ``AsyncEngineArgs`` types it as: a nested
    config such as ``structured_outputs_config: {backend: xgrammar}`` is a dataclass there (vLLM's
    command line parses it into one; a plain dict fails deep in the engine's start)."""
    mappings = {key: value for key, value in kwargs.items() if isinstance(value, dict)}
    if not mappings:
        return kwargs
    typed = vllm_engine_kwargs_model().model_validate(mappings)
    return {**kwargs, **{key: getattr(typed, key) for key in mappings}}
