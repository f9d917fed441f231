"""Typed config for the platform's ``args:`` block and the engine-independent parts of a model.

Each model entry has the shape of Ray Serve LLM's ``LLMConfig``:
``model_loading_config`` (what to load), ``deployment_config`` (Ray Serve deployment
options), ``engine_kwargs`` (typed per engine, see ``vllm_models.py``).
"""

from __future__ import annotations

import os
import re
from typing import Any, ClassVar, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    PrivateAttr,
    field_validator,
    model_validator,
)

from common.base_pydantic import StrictModel
from common.config_errors import ConfigError, ConfigIssue
from common.serve_options import MERGED_BATCHES
from configs.api_keys import MIN_KEY_LENGTH, APIKey, APIKeyEntry, refuse_inline_keys
from configs.capabilities import Capability, ModelType
from configs.cluster_models import GcsFaultToleranceConfig
from configs.pipeline_models import PipelineConfig
from configs.usage_models import UsageConfig

CLOUD_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "file://")
_PATH_PREFIXES = ("/", "./", "../", "~")


def engine_deployment_name(group: str | None, name: str | None, model_id: str) -> str:
    """The Serve deployment that holds a model's engine: its group's, the name its
    ``deployment_config`` gives, or its model id made a deployment name."""
    return group or name or re.sub(r"[^A-Za-z0-9_.\-]", "-", model_id)


class ModelLoadingConfig(StrictModel):
    model_id: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/\-]*$",
        description="The name clients send as `model`.",
    )
    model_source: str = Field(
        min_length=1,
        description="Hugging Face id, local path (absolute or ./relative), or s3:// gs:// URI.",
    )
    type: ModelType = Field(
        description="The engine that serves the model, which decides what its engine_kwargs "
        "take: vllm, audio, vision or video (any case)."
    )

    @field_validator("type", mode="before")
    @classmethod
    def _lower_type(cls, value: Any) -> Any:
        # The seed config writes "VLLM": accept any case.
        return value.lower() if isinstance(value, str) else value

    @field_validator("model_source")
    @classmethod
    def _local_path_exists(cls, value: str) -> str:
        if value.startswith(_PATH_PREFIXES) and not os.path.exists(os.path.expanduser(value)):
            raise ValueError(f"local path {value!r} does not exist (relative to {os.getcwd()})")
        return value


class RayActorOptions(StrictModel):
    """What Ray reserves for each replica, as Ray Serve's ``ray_actor_options``."""

    num_cpus: float | None = Field(
        default=None,
        ge=0,
        description="CPUs Ray reserves for each replica (Ray's num_cpus, fractions allowed); "
        "unset: 1 for a model's replica, 0 for the router's",
    )
    num_gpus: float | None = Field(
        default=None,
        ge=0,
        description="GPUs for each replica (Ray's num_gpus): a share below 1 (e.g. 0.4) packs "
        "several replicas on one GPU, above 1 a whole number (2, 4, ...); a vLLM model on "
        "several GPUs shards over them (tensor_parallel_size x pipeline_parallel_size). Unset: "
        "no GPU",
    )
    memory: int | None = Field(
        default=None,
        ge=0,
        description="memory Ray reserves for each replica, in bytes (Ray's memory resource: "
        "it schedules by it)",
    )
    resources: dict[str, float] | None = Field(
        default=None,
        description="custom Ray resources each replica needs, name -> amount (Ray's "
        "resources), e.g. to keep it on nodes that offer one",
    )
    accelerator_type: str | None = Field(
        default=None,
        description="run replicas only on nodes with this accelerator (Ray's accelerator_type, "
        "e.g. A100, H100, L4)",
    )
    runtime_env: dict[str, Any] | None = Field(
        default=None,
        description="Ray runtime_env of each replica (env_vars, pip, ...), over the "
        "application's; the platform adds its replica settings to env_vars",
    )

    @field_validator("num_gpus")
    @classmethod
    def _whole_above_one(cls, value: float | None) -> float | None:
        if value is not None and value > 1 and value != int(value):
            raise ValueError("a share above one GPU must be a whole number (1, 2, 4, ...)")
        return value


class AutoscalingConfig(StrictModel):
    """Ray Serve's ``autoscaling_config``: Serve adds and removes replicas by the requests each
    runs and queues (the fields set here are passed on; the defaults are Serve's)."""

    min_replicas: int = Field(
        default=1,
        ge=0,
        description="fewest replicas; 0 scales the model to zero when idle, and a request that "
        "arrives then waits while a replica starts",
    )
    max_replicas: int = Field(
        default=1,
        ge=1,
        description="most replicas; deploy_app.py's fit check places this many, and the request "
        "queue is sized for them",
    )
    initial_replicas: int | None = Field(
        default=None,
        ge=0,
        description="replicas started at deploy, between min_replicas and max_replicas; unset: "
        "min_replicas",
    )
    target_ongoing_requests: float = Field(
        default=2,
        gt=0,
        description="requests (running and queued) per replica that Serve scales to keep",
    )
    upscale_delay_s: float = Field(
        default=30.0,
        ge=0,
        description="seconds the load must stay above target before Serve adds replicas",
    )
    downscale_delay_s: float = Field(
        default=600.0,
        ge=0,
        description="seconds the load must stay below target before Serve removes replicas",
    )
    upscaling_factor: float | None = Field(
        default=None,
        gt=0,
        description="multiplies each scale-up step (below 1: more cautious); unset: Serve's 1",
    )
    downscaling_factor: float | None = Field(
        default=None,
        gt=0,
        description="multiplies each scale-down step (below 1: more cautious); unset: Serve's 1",
    )
    metrics_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="seconds between the load reports Serve scales by (deprecated by Serve)",
    )
    look_back_period_s: float = Field(
        default=30.0,
        gt=0,
        description="seconds over which Serve averages the load it scales by",
    )

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})"
            )
        if self.initial_replicas is not None and not (
            self.min_replicas <= self.initial_replicas <= self.max_replicas
        ):
            raise ValueError("initial_replicas must lie between min_replicas and max_replicas")
        return self


class DeploymentConfig(StrictModel):
    """Ray Serve deployment options, passed to ``Deployment.options``."""

    name: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
        description="the Serve deployment's name, after which the model's application is named; "
        "unset: the model_id with other characters than letters, digits, '_', '.' and '-' "
        "made '-'",
    )
    num_replicas: int | None = Field(
        default=None,
        ge=1,
        description="a fixed number of replicas (Serve's num_replicas); not with "
        "autoscaling_config. Neither: 1",
    )
    autoscaling_config: AutoscalingConfig | None = Field(
        default=None,
        description="replicas scaled by load between min_replicas and max_replicas; not with "
        "num_replicas",
    )
    max_ongoing_requests: int | None = Field(
        default=None,
        ge=1,
        description="requests one replica runs at once (Serve's max_ongoing_requests); unset: "
        f"vLLM's max_num_seqs or 256 for a vllm model, {MERGED_BATCHES} x max_batch_size for a "
        "batching "
        "engine, 4 for an image-text-to-text chat model, the sum of its models' for a group",
    )
    max_queued_requests: int | None = Field(
        default=None,
        ge=-1,
        description="requests that may wait for a replica (Serve's max_queued_requests); past "
        "it a request gets a 503 with Retry-After at once. Unset: twice what the deployment "
        "runs at its most replicas, at least 8; -1: unbounded",
    )
    ray_actor_options: RayActorOptions = Field(
        default_factory=RayActorOptions,
        description="what Ray reserves for each replica (CPUs, GPUs, memory) and its runtime_env",
    )
    placement_group_bundles: list[dict[str, float]] | None = Field(
        default=None,
        description="a placement group per replica (Serve's placement_group_bundles): resource "
        "bundles such as [{CPU: 4, GPU: 1}, {GPU: 1}], the replica in the first; unset: one "
        "{GPU: 1} bundle per shard for a vLLM model on several GPUs, else none",
    )
    placement_group_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] | None = (
        Field(
            default=None,
            description="how a replica's bundles spread over nodes (Ray's placement group "
            "strategies); unset: STRICT_PACK (one node) for a tensor-parallel vLLM model, else "
            "PACK",
        )
    )
    health_check_period_s: float | None = Field(
        default=None,
        gt=0,
        description="seconds between Serve's health checks of a replica (Serve's default: 10)",
    )
    health_check_timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="seconds a health check may take before Serve counts the replica unhealthy "
        "and replaces it; unset: 60 (model loads and batches can hold a replica's loop briefly)",
    )
    graceful_shutdown_timeout_s: float | None = Field(
        default=None,
        ge=0,
        description="seconds Serve lets a stopping replica finish its requests before it kills "
        "it (Serve's default: 20)",
    )
    max_constructor_retry_count: int | None = Field(
        default=None,
        ge=1,
        description="times Serve starts a replica whose constructor fails (a model that cannot "
        "load) before it marks the model failed; unset: Serve's own, 3 per replica (at most 20)",
    )

    @model_validator(mode="after")
    def _replicas_or_autoscaling(self) -> DeploymentConfig:
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError("set num_replicas or autoscaling_config, not both")
        return self

    def serve_options(self, defaults: dict[str, Any]) -> dict[str, Any]:
        """Options for ``Deployment.options``: what the YAML set, over the engine's defaults."""
        options = {
            **defaults,
            **self.model_dump(exclude_none=True, exclude_unset=True, exclude={"ray_actor_options"}),
        }
        actor = {
            **defaults.get("ray_actor_options", {}),
            **self.ray_actor_options.model_dump(exclude_none=True),
        }
        options["ray_actor_options"] = actor
        return options


def batch_size_description(inputs: str) -> str:
    """``max_batch_size``'s description, shared by the engine types that narrow its limits."""
    return (
        f"most {inputs} in one model call (Ray Serve's @serve.batch max_batch_size): concurrent "
        f"requests' {inputs} are batched; the replica's default max_ongoing_requests is "
        f"{MERGED_BATCHES} times it"
    )


BATCH_WAIT_DESCRIPTION = (
    "seconds Serve waits for more inputs to fill a batch before it runs one (Ray Serve's "
    "batch_wait_timeout_s); 0: at once with what has arrived"
)


class TransformersEngineKwargs(StrictModel):
    """What every transformers engine shares: weights, precision and Serve batching."""

    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto",
        description="the precision the weights are loaded in; auto: float16 on a GPU, float32 on "
        "the CPU",
    )
    revision: str | None = Field(
        default=None,
        description="the branch, tag or commit of a Hugging Face model to load; unset: its "
        "default branch",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="run Python code that the model's repository ships (transformers' "
        "trust_remote_code); only for sources you trust",
    )
    max_batch_size: int = Field(
        default=16, ge=1, le=512, description=batch_size_description("inputs")
    )
    batch_wait_timeout_s: float = Field(
        default=0.01, ge=0, le=10, description=BATCH_WAIT_DESCRIPTION
    )


class MultiplexConfig(StrictModel):
    """Variants of one model served by its replicas: LoRA adapters of a vLLM model, or other
    weights of a transformers model. Clients pick one with ``model: "<model_id>:<variant>"`` (or
    Ray Serve's ``serve_multiplexed_model_id`` header); Serve routes each variant to replicas
    that hold it and keeps at most ``max_variants_per_replica`` loaded per replica."""

    variants: dict[str, str] = Field(
        default_factory=dict, description="name -> source (path, hub id, s3://)"
    )
    variants_dir: str | None = Field(
        default=None, description="each subdirectory is a variant, named after it"
    )
    max_variants_per_replica: int = Field(
        default=3,
        ge=1,
        le=1024,
        description="variants one replica holds loaded at once (Serve's "
        "max_num_models_per_replica): the least recently used gives way to another; a vLLM "
        "model's max_loras",
    )

    @field_validator("variants")
    @classmethod
    def _names_and_sources(cls, value: dict[str, str]) -> dict[str, str]:
        for name, source in value.items():
            if source.startswith(_PATH_PREFIXES) and not os.path.exists(os.path.expanduser(source)):
                raise ValueError(
                    f"variant {name!r}: local path {source!r} does not exist "
                    f"(relative to {os.getcwd()})"
                )
        return value

    @field_validator("variants_dir")
    @classmethod
    def _a_directory(cls, value: str | None) -> str | None:
        if value is not None and not os.path.isdir(os.path.expanduser(value)):
            raise ValueError(f"{value!r} is not a directory (relative to {os.getcwd()})")
        return value

    # variants_dir's subdirectories, listed once when the config is validated, so the router's
    # routes, the replicas' variants and the engine's settings all see the same set.
    _found: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _some_variants(self) -> MultiplexConfig:
        if self.variants_dir:
            root = os.path.abspath(os.path.expanduser(self.variants_dir))
            self._found = {
                name: os.path.join(root, name)
                for name in sorted(os.listdir(root))
                if os.path.isdir(os.path.join(root, name)) and not name.startswith(".")
            }
        variants = self.all_variants()
        if not variants:
            raise ValueError("no variants: list them in variants or put them in variants_dir")
        for name in variants:  # clients write "<model_id>:<name>"
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}", name):
                raise ValueError(f"variant name {name!r}: use letters, digits, '.', '_' and '-'")
        return self

    def all_variants(self) -> dict[str, str]:
        """Every variant by name: each subdirectory of ``variants_dir``, then the listed ones."""
        return {**self._found, **self.variants}


class BaseModelEntry(StrictModel):
    """One model in ``models:``; engine types subclass it with typed ``engine_kwargs``."""

    model_loading_config: ModelLoadingConfig = Field(
        description="what to load: the model's id, its source and its engine type"
    )
    deployment_config: DeploymentConfig = Field(
        default_factory=DeploymentConfig,
        description="the Serve options of the model's deployment (replicas, resources, "
        "queue); a model in a group takes its group's instead",
    )
    engine_kwargs: Any = Field(
        default=None,
        description="the engine's settings, by model_loading_config.type: vLLM's engine "
        "arguments for vllm, the transformers engine's for audio, vision and video",
    )
    multiplex_config: MultiplexConfig | None = Field(
        default=None,
        description="variants of the model (LoRA adapters, other weights) that its replicas "
        "serve, which a request picks with `model: <model_id>:<variant>`",
    )
    group: str | None = Field(
        default=None,
        description="a name in groups: the model shares that group's deployment and replicas",
    )

    # Serve options the engine type wants unless the YAML says otherwise.
    default_serve_options: ClassVar[dict[str, Any]] = {
        "ray_actor_options": {"num_cpus": 1},
        "health_check_timeout_s": 60,  # model loads and batches can hold a replica's loop briefly
    }

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    @field_validator("engine_kwargs", mode="before")
    @classmethod
    def _engine_kwargs_none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @property
    def model_id(self) -> str:
        return self.model_loading_config.model_id

    @property
    def deployment_name(self) -> str:
        return engine_deployment_name(self.group, self.deployment_config.name, self.model_id)

    @classmethod
    def engine_kwargs_model(cls) -> type[BaseModel] | None:
        """A model that ``engine_kwargs`` must validate against, checked by the loader."""
        return None

    @classmethod
    def engine_kwargs_checker(cls) -> str | None:
        """What ``engine_kwargs_model`` comes from, when building it is costly (importing an
        engine's library): a config stamped with the same checker skips the check, and so do
        ``engine_kwargs`` it accepted before (``common.passed_checks``). None: always check."""
        return None

    def capabilities(self) -> list[Capability]:
        raise NotImplementedError

    def max_context_tokens(self) -> int | None:
        """The context length known from config, for the router's request checks."""
        return None

    def max_upload_bytes(self) -> int | None:
        """The largest file upload (multipart) the model accepts, for the router's 413."""
        return None

    def tensor_metadata(self) -> dict[str, list[dict[str, Any]]] | None:
        """Open Inference Protocol ``inputs``/``outputs`` when the model serves ``/v2``."""
        return None

    def serve_options(self) -> dict[str, Any]:
        return self.deployment_config.serve_options(self.default_serve_options)

    def variants(self) -> dict[str, str]:
        """Multiplexed variants by name (empty when the model has none)."""
        return self.multiplex_config.all_variants() if self.multiplex_config else {}


class TransformersModelEntry(BaseModelEntry):
    """A model served by a batching transformers engine (``servers/batching.py``)."""

    engine_kwargs: TransformersEngineKwargs = Field(
        description="the transformers engine's settings: weights, precision and batching"
    )

    def serve_options(self) -> dict[str, Any]:
        options = super().serve_options()
        if self.deployment_config.max_ongoing_requests is None:
            # Serve's default (5) would cap every batch at 5 requests; hold MERGED_BATCHES full
            # ones.
            options["max_ongoing_requests"] = MERGED_BATCHES * self.engine_kwargs.max_batch_size
        return options


class CorsConfig(StrictModel):
    """Which web pages of other origins may call the API from a browser: Starlette's
    ``CORSMiddleware`` options, on the router and on each model's own port."""

    allow_origins: list[str] = Field(
        default_factory=list,
        description='origins whose pages may call the API, e.g. ["https://app.example.com"], '
        'or `"*"` for any; empty: no CORS headers at all',
    )
    allow_credentials: bool = Field(
        default=False,
        description="let those pages send credentials (cookies, an Authorization header) "
        '(Access-Control-Allow-Credentials); not with allow_origins `"*"`',
    )
    allow_methods: list[str] = Field(
        default_factory=lambda: ["GET", "POST", "OPTIONS"],
        description="HTTP methods allowed from other origins (Access-Control-Allow-Methods)",
    )
    allow_headers: list[str] = Field(
        default_factory=lambda: ["Authorization", "Content-Type"],
        description="request headers allowed from other origins (Access-Control-Allow-Headers)",
    )

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> CorsConfig:
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError(
                "allow_origins '*' with allow_credentials: true lets any site act with a "
                "user's credentials; list the origins explicitly"
            )
        return self


class MediaConfig(StrictModel):
    """Where the router may fetch media that requests name by URL (image_url, video_url, /v2
    inputs).

    ``data:`` URLs always work. ``http(s)`` URLs only for ``allowed_domains`` (and their
    subdomains) that resolve to public addresses, or to ``allowed_networks`` the operator opens.
    Local files are never read.
    """

    allowed_domains: list[str] = Field(
        default_factory=list,
        description="hosts whose http(s) URLs may be fetched, their subdomains included, e.g. "
        '["images.example.com"]; empty: data: URLs only',
    )
    allowed_networks: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="non-public networks those hosts may resolve to (CIDRs, e.g. 10.1.2.0/24); "
        "otherwise only public addresses are fetched from",
    )
    max_download_bytes: int = Field(
        default=20 * 1024 * 1024,
        ge=1024,
        description="the most bytes one URL may bring (a data: URL's decoded bytes too); past "
        "it a 413",
    )
    download_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="seconds one URL's download may take, connecting included; past it the "
        "request fails",
    )
    max_urls_per_request: int = Field(
        default=16, ge=0, description="media URLs one request may name; counted before fetching"
    )
    max_request_download_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="what one request's URLs fetch in all"
    )
    max_media_parts_per_request: int = Field(
        default=32,
        ge=0,
        description="image, video and audio parts one chat request may carry, data: URLs "
        "included; counted before anything is fetched or decoded",
    )
    max_image_pixels: int = Field(
        default=4096 * 4096,
        ge=1,
        description="a chat image's width x height, read from its header before it is decoded",
    )
    max_frame_pixels: int = Field(
        default=4096 * 2160,
        ge=1,
        description="a chat video frame's width x height (a 4K frame), read from the headers and "
        "from each frame as it is decoded, before any frame is converted; past it a 413",
    )
    max_video_frames: int = Field(
        default=3600,
        ge=1,
        description="frames of one chat video the router checks (2 minutes at 30 fps); a video "
        "with more gets a 413 video_too_long",
    )
    max_video_check_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="seconds the check of one chat video's frames may take (in a thread, which "
        "the request's timeout cannot stop); past it a 413 video_too_long",
    )

    @field_validator("allowed_domains")
    @classmethod
    def _hostnames(cls, value: list[str]) -> list[str]:
        for domain in value:
            if not re.fullmatch(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9\-.]*[A-Za-z0-9])?", domain):
                raise ValueError(f"{domain!r} is not a host name (no scheme, path or port)")
        return value


class RouterConfig(StrictModel):
    """Deployment options and request limits of the ``MultiModelRouter`` ingress."""

    num_replicas: int = Field(
        default=1,
        ge=1,
        description="router replicas (a fixed count, Serve's num_replicas); each model's "
        "request capacity is shared out between them",
    )
    max_replicas_per_node: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description="router replicas one node may run (Serve's max_replicas_per_node). On a "
        "cluster, 1 with num_replicas 2 or more keeps a router on another node when any one "
        "node (the head included) is lost; unset: no limit, Ray may put every router on one "
        "node",
    )
    max_ongoing_requests: int = Field(
        default=1024,
        ge=1,
        description="requests one router replica handles at once, streams included (Serve's "
        "max_ongoing_requests)",
    )
    ray_actor_options: RayActorOptions = Field(
        default_factory=lambda: RayActorOptions(num_cpus=0),
        description="what Ray reserves for each router replica; by default no CPU",
    )
    max_request_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description="the largest JSON request body, in bytes, on the router and the one-hop "
        "URLs; past it a 413. File uploads and /v2 bodies may be as large as their model's "
        "file limit",
    )
    request_timeout_s: float = Field(
        default=600,
        gt=0,
        description="seconds a whole request may take on /v1, /v2 and the one-hop URLs, from "
        "its first byte to its last, streams included; past it the engine's work is cancelled "
        "and the client gets a 504",
    )
    max_upload_memory_bytes: int = Field(
        default=1024 * 1024 * 1024,
        ge=1024 * 1024,
        description="what one router replica (or a model's own port) may hold at once for "
        "upload bodies and fetched media, all requests together, in bytes; past it a 503 with "
        "Retry-After. It must hold one of each model's largest uploads",
    )


class GroupConfig(StrictModel):
    """Several small models in one deployment: each replica loads all of them and shares its
    CPUs and GPU share between them (models name the group in their ``group`` field)."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
        max_length=64,
        description="what its models write in group; also the name of its Serve deployment",
    )
    deployment_config: DeploymentConfig = Field(
        default_factory=DeploymentConfig,
        description="the Serve options of the group's deployment (its models set none of "
        "their own); a replica's resources are shared by all the group's models",
    )


class PlatformSettings(StrictModel):
    """What the whole platform shares: keys, CORS, the router's limits, the media policy.

    The router application's ``args`` hold exactly these; each model application gets a copy
    of the parts its replicas enforce themselves (``MODEL_APP_SETTINGS``).
    """

    api_keys: list[APIKeyEntry] = Field(
        default_factory=list, description="named keys, read from env or files"
    )
    api_keys_env: str | None = Field(
        default=None, description="env var with comma-separated keys for every model"
    )
    cors: CorsConfig = Field(
        default_factory=CorsConfig,
        description="browser calls from other origins; off until allow_origins names one",
    )
    router: RouterConfig = Field(
        default_factory=RouterConfig,
        description="the router's Serve deployment and its request limits",
    )
    media: MediaConfig = Field(
        default_factory=MediaConfig,
        description="which media URLs may be fetched for requests, and how much media a "
        "request may carry",
    )
    pipelines: list[PipelineConfig] = Field(
        default_factory=list, description="models that chain other models"
    )
    usage: UsageConfig = Field(
        default_factory=UsageConfig,
        description="the usage ledger's database (and the keys made through /admin/keys)",
    )
    gcs_fault_tolerance: GcsFaultToleranceConfig | None = Field(
        default=None,
        description="KubeRay: keep the head's GCS state in this Redis, so a restarted head "
        "recovers the applications (rendered by deploy_app.py kuberay as "
        "gcsFaultToleranceOptions; its --gcs-redis-* flags override it); unset: none",
    )

    keys_in_user_config: bool = Field(
        default=False,
        description="set by the renderer: the key entries reach the replicas as their "
        "deployments' user_config (key_sources); until it arrives every request is refused",
    )

    _inline_keys_refused = field_validator("api_keys", mode="before")(refuse_inline_keys)

    @model_validator(mode="after")
    def _a_name_per_key(self) -> PlatformSettings:
        first: dict[str, int] = {}
        for index, entry in enumerate(self.api_keys):
            if entry.name in first:
                raise ValueError(
                    f"api_keys[{first[entry.name]}] and api_keys[{index}] are both named "
                    f"{entry.name!r}: each key needs a name of its own (logs and limits go by it)"
                )
            first[entry.name] = index
        return self

    @model_validator(mode="after")
    def _budgets_need_the_ledger(self) -> PlatformSettings:
        if self.usage.database is None:
            for index, entry in enumerate(self.api_keys):
                if entry.monthly_token_budget or entry.daily_token_budget:
                    raise ValueError(
                        f"api_keys[{index}] ({entry.name!r}) has a token budget, which the usage "
                        "ledger counts: set usage.database (sqlite:////var/lib/platform/usage.db, "
                        "say) or drop the budget"
                    )
        return self

    def secret_problems(self, files: bool = True) -> list[tuple[str, str]]:
        """(field, problem) for what is wrong with the keys as read here: missing, shorter than
        ``MIN_KEY_LENGTH``, or one key from two sources (the last would silently win, dropping
        the other's scope or limits). Checked where the platform serves (the builders,
        ``deploy_app.py`` starting Ray) and where keys are sent to it (``--address``), never where
        it is only validated, planned or rendered: secrets live on the cluster, not on the
        planner's machine. ``files``: whether key files are read here too (not by a command that
        sends keys to a cluster: each replica reads those)."""
        entries = [e for e in self.api_keys if files or e.key_file is None]
        problems = [("api_keys", reason) for entry in entries if (reason := entry.missing())]
        if self.api_keys_env and not self._listed_keys():
            problems.append(
                (
                    "api_keys_env",
                    f"api_keys_env names {self.api_keys_env!r}, which is not set here or holds no "
                    "key: the API would be open to anyone; set the variable or remove api_keys_env",
                )
            )
        source_of: dict[str, str] = {}
        for field, source, key in self._sourced_keys(files):
            if len(key.secret) < MIN_KEY_LENGTH:
                problems.append(
                    (
                        field,
                        f"{source} is {len(key.secret)} characters; a key needs at least "
                        f"{MIN_KEY_LENGTH} (e.g. `openssl rand -hex 24`)",
                    )
                )
            if key.secret in source_of:
                problems.append((field, f"{source_of[key.secret]} and {source} hold the same key"))
            source_of.setdefault(key.secret, source)
        return problems

    def resolved_api_keys(self) -> list[APIKey]:
        """Every key with its scope, read from its source now."""
        return [key for _, _, key in self._sourced_keys()]

    def _sourced_keys(self, files: bool = True) -> list[tuple[str, str, APIKey]]:
        """(field, where the key comes from, the key) for every key that could be read
        (``files``: key files included)."""
        keys = []
        for index, entry in enumerate(self.api_keys):
            # one that cannot be read here: secret_problems says so
            if (files or entry.key_file is None) and (secret := entry.secret()):
                keys.append(("api_keys", f"api_keys[{index}] ({entry.name})", entry.key(secret)))
        if self.api_keys_env:
            keys += [
                (
                    "api_keys_env",
                    f"key {number} of {self.api_keys_env}",
                    APIKey(secret, self.api_keys_env),  # never an admin: no per-key settings
                )
                for number, secret in enumerate(self._listed_keys(), start=1)
            ]
        return keys

    def _listed_keys(self) -> list[str]:
        listed = os.environ.get(self.api_keys_env or "", "").split(",")
        return [key.strip() for key in listed if key.strip()]

    def live_api_keys(self) -> list[dict[str, Any]] | None:
        """The keys as running replicas get them as ``user_config`` (``APIKey.live``: digests of
        the keys read from this environment, files by their path, which each replica reads);
        None when a variable they come from is not set here (the keys the cluster built with
        apply). Keys read here but too short or given twice: a ConfigError."""
        variables = [self.api_keys_env] + [entry.key_env for entry in self.api_keys]
        if any(name and not os.environ.get(name, "").strip() for name in variables):
            return None
        return [key.live() for key in self.keys_as_replicas_hold_them()]

    def keys_as_replicas_hold_them(self) -> list[APIKey]:
        """Every key: those from environment variables read here (a ConfigError when one is
        missing, too short or given twice), a file's by its path alone (each replica reads the
        file while serving: missing or emptied, its key is revoked, and the platform stays
        closed)."""
        if problems := self.secret_problems(files=False):
            raise ConfigError([ConfigIssue((field,), message) for field, message in problems])
        keys = [entry.key(entry.secret() if entry.key_env else "") for entry in self.api_keys]
        return keys + [APIKey(secret, self.api_keys_env or "") for secret in self._listed_keys()]


# The settings a model application's replicas enforce on their own HTTP port (the one-hop
# path skips the router); the renderer copies them into every model application's args.
MODEL_APP_SETTINGS = ("api_keys", "api_keys_env", "cors", "media", "usage")


class PlatformConfig(PlatformSettings):
    """The ``args:`` block of the platform application in ``model_config.yaml``: the shared
    settings plus the models (and the groups some of them share)."""

    models: list[dict[str, Any]] = Field(
        min_length=1,
        validation_alias=AliasChoices("models", "llm_configs"),
        description="the models to serve, each checked by the entry class of its "
        "model_loading_config.type (also read as llm_configs, the seed config's name)",
    )
    groups: list[GroupConfig] = Field(
        default_factory=list,
        description="deployments that several small models share, each model naming its group",
    )
    platform_app: str | None = Field(
        default=None,
        description="set by the renderer: the router application that serves these models",
    )
    engine_kwargs_checked_by: str | None = Field(
        default=None,
        description="set by the renderer: the engine library (name==version) that already "
        "checked these models' engine_kwargs; a build with that same library installed skips "
        "the check",
    )
