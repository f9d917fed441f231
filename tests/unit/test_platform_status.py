"""Each model's phase from Serve's instance details (shaped as ``get_serve_details()`` returns
them), the platform run as one application per model or as one application."""

from cloud.download_progress import Download
from configs import load_platform_config
from serve.platform_status import (
    DOWNLOADING,
    FAILED,
    FAILING,
    LOADING,
    READY,
    WAITING,
    ModelPhase,
    describe,
    entry_deployment_name,
    model_phases,
)


def _app(
    model_id: str,
    status: str,
    replicas: list[dict],
    message: str = "",
    resources: dict | None = None,
) -> dict:
    return {
        "deployed_app_config": {
            "import_path": "builders.app_builder:build_model_app",
            "args": {"models": [{"model_loading_config": {"model_id": model_id}}]},
        },
        "deployments": {
            model_id: {
                "status": status,
                "message": message,
                "replicas": replicas,
                "target_num_replicas": len(replicas),
                "required_resources": resources or {"CPU": 1},
            }
        },
    }


TRACEBACK = (
    "The deployment failed to start 2 times in a row. This may be due to a problem with its "
    "constructor or initial health check failing. See controller logs for details. Error:\n"
    'Traceback (most recent call last):\n  File "x.py", line 1\n'
    "OSError: no-such-org/no-such-model is not a local folder\n"
)


def test_each_phase_with_its_reason():
    details = {
        "applications": {
            "platform": {
                "deployed_app_config": {"import_path": "builders.app_builder:build_router"},
                "deployments": {},
            },
            "platform.chat": _app("chat", "HEALTHY", [{"state": "RUNNING", "node_id": "n1"}]),
            "platform.big": _app(
                "big",
                "UPDATING",
                [{"state": "STARTING", "node_id": None}],
                resources={"CPU": 1, "GPU": 0.4, "accelerator_type:H100": 0.001},
            ),
            "platform.slow": _app("slow", "UPDATING", [{"state": "STARTING", "node_id": "n1"}]),
            "platform.bad": _app(
                "bad", "UPDATING", [{"state": "STARTING", "node_id": "n1"}], message=TRACEBACK
            ),
            "platform.gone": _app("gone", "DEPLOY_FAILED", [], message=TRACEBACK),
            "platform.idle": _app("idle", "HEALTHY", []),
            # needs no CPU, GPU or memory: not yet on a node, yet waiting for nothing
            "platform.light": _app(
                "light", "UPDATING", [{"state": "STARTING", "node_id": None}], resources={"CPU": 0}
            ),
        }
    }
    free = [{"CPU": 6, "GPU": 0.2}, {"CPU": 2}]
    phases = {p.model_ids: (p.phase, p.detail) for p in model_phases(details, free)}
    assert phases == {
        ("chat",): (READY, "1/1 replicas running"),
        ("big",): (
            WAITING,
            "1 replica(s) not placed: needs CPU 1, GPU 0.4; largest free on a node: CPU 6, GPU 0.2",
        ),
        ("slow",): (LOADING, "1 replica(s) starting, 0/1 running"),
        ("bad",): (FAILING, "OSError: no-such-org/no-such-model is not a local folder"),
        ("gone",): (FAILED, "OSError: no-such-org/no-such-model is not a local folder"),
        ("idle",): (READY, "scaled to zero: the first request starts a replica"),
        ("light",): (LOADING, "1 replica(s) starting, 0/1 running"),
    }


def test_a_replica_fetching_weights_is_downloading_and_a_ready_one_says_what_it_fetched():
    details = {
        "applications": {
            "platform.slow": _app("slow", "UPDATING", [{"state": "STARTING", "node_id": "n1"}]),
            "platform.chat": _app("chat", "HEALTHY", [{"state": "RUNNING", "node_id": "n1"}]),
            "platform.local": _app("local", "UPDATING", [{"state": "STARTING", "node_id": "n1"}]),
        }
    }
    downloads = {
        "platform.slow/slow": Download(3 * 2**30, 12 * 2**30),
        "platform.chat/chat": Download(700 * 2**20, 700 * 2**20, finished=True, seconds=41.6),
        "other-platform.local/local": Download(1, 2),
    }  # another application's model of that name
    phases = {p.model_ids: (p.phase, p.detail) for p in model_phases(details, [], downloads)}
    assert phases == {
        ("slow",): (DOWNLOADING, "downloading: 3.00 GiB of 12.00 GiB (25%)"),
        ("chat",): (READY, "1/1 replicas running; downloaded 700.0 MiB in 42 s"),
        ("local",): (LOADING, "1 replica(s) starting, 0/1 running"),
    }


def test_a_models_variant_router_shows_only_while_it_is_not_ready():
    ready, starting = (
        [{"state": "RUNNING", "node_id": "n1"}],
        [{"state": "STARTING", "node_id": "n1"}],
    )
    details = {
        "applications": {
            "platform.chat": _app("chat", "HEALTHY", ready),
            "platform.lora": _app("lora", "HEALTHY", ready),
        }
    }
    details["applications"]["platform.chat"]["deployments"]["VariantRouter"] = _app(
        "", "HEALTHY", ready
    )["deployments"][""]
    details["applications"]["platform.lora"]["deployments"] = {
        "VariantRouter": _app("", "UPDATING", starting)["deployments"][""],
        **details["applications"]["platform.lora"]["deployments"],
    }
    phases = [(p.model_ids, p.phase, p.detail) for p in model_phases(details, [])]
    assert phases == [
        (("chat",), READY, "1/1 replicas running"),
        (("lora",), READY, "1/1 replicas running"),
        (("lora",), LOADING, "VariantRouter: 1 replica(s) starting, 0/1 running"),
    ]


# The platform as one application (``serve run model_config.yaml``), modelled on what
# get_serve_details() gave for it on Ray 2.60: the router and one engine deployment per ungrouped
# model and per group, in the application that holds the file's args.
def _replica(state: str, node_id: str | None = "a14c7e9e") -> dict:
    return {
        "node_id": node_id,
        "node_ip": "127.0.0.1" if node_id else None,
        "actor_id": "10cf596adb207ea0bd04893101000000",
        "actor_name": "SERVE_REPLICA::platform#b-vit#gr6m7fk4",
        "replica_id": "gr6m7fk4",
        "state": state,
        "pid": 19022,
        "start_time_s": 1796541810.78,
    }


def _deployment(name: str, status: str, replicas: list[dict], message: str = "") -> dict:
    return {
        "name": name,
        "status": status,
        "status_trigger": "CONFIG_UPDATE_COMPLETED"
        if status == "HEALTHY"
        else "CONFIG_UPDATE_STARTED",
        "message": message,
        "deployment_config": {"name": name},
        "target_num_replicas": len(replicas),
        "required_resources": {"CPU": 0.1},
        "replicas": replicas,
        "recent_dead_replicas": [],
    }


def _vision(model_id: str, **extra) -> dict:
    return {
        "model_loading_config": {"model_id": model_id, "model_source": "org/vit", "type": "vision"},
        "engine_kwargs": {"task": "image-classification"},
        **extra,
    }


ONE_APP_MODELS = [
    _vision("b-vit", deployment_config={"ray_actor_options": {"num_cpus": 0.1}}),
    _vision("c-vit", group="small"),
    _vision("d-vit", group="small"),
    _vision("org/e-vit"),  # its deployment: org-e-vit
    _vision("f-vit", deployment_config={"name": "named"}),
]
ONE_APP_GROUPS = [{"name": "small", "deployment_config": {"ray_actor_options": {"num_cpus": 1}}}]


def _platform(deployments: list[dict], status: str = "RUNNING", message: str = "", **args) -> dict:
    return {
        "applications": {
            "platform": {
                "name": "platform",
                "route_prefix": "/",
                "docs_path": None,
                "status": status,
                "message": message,
                "last_deployed_time_s": 1796541802.84,
                "deployed_app_config": {
                    "name": "platform",
                    "route_prefix": "/",
                    "import_path": "builders.app_builder:build_app",
                    "runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1"}},
                    "args": args or {"models": ONE_APP_MODELS, "groups": ONE_APP_GROUPS},
                },
                "source": "declarative",
                "deployments": {d["name"]: d for d in deployments},
            }
        }
    }


def test_the_platform_as_one_application_names_each_model_with_its_engines_phase():
    details = _platform(
        [
            _deployment("MultiModelRouter", "HEALTHY", [_replica("RUNNING")]),
            _deployment("b-vit", "HEALTHY", [_replica("RUNNING")]),
            _deployment("small", "UPDATING", [_replica("STARTING")]),
            _deployment("org-e-vit", "UPDATING", [_replica("STARTING", node_id=None)]),
            _deployment("named", "DEPLOY_FAILED", [], message=TRACEBACK),
        ]
    )
    downloads = {"platform/c-vit": Download(1 * 2**20, 4 * 2**20)}
    assert model_phases(details, [{"CPU": 0.05}], downloads) == [
        ModelPhase("platform", ("b-vit",), READY, "1/1 replicas running", 1, 1, ("127.0.0.1",)),
        ModelPhase(
            "platform",
            ("c-vit", "d-vit"),
            DOWNLOADING,
            "c-vit downloading: 1.0 MiB of 4.0 MiB (25%)",
            0,
            1,
        ),
        ModelPhase(
            "platform",
            ("org/e-vit",),
            WAITING,
            "1 replica(s) not placed: needs CPU 0.1; largest free on a node: CPU 0.05",
            0,
            1,
        ),
        ModelPhase(
            "platform",
            ("f-vit",),
            FAILED,
            "OSError: no-such-org/no-such-model is not a local folder",
            0,
            0,
        ),
    ]


def test_each_running_replicas_node_is_shown_and_a_starting_ones_is_not():
    """A model of three replicas on two nodes (the cluster's status and /ready show where each
    runs): the replica still starting has no node to show yet."""
    replicas = [
        {**_replica("RUNNING"), "node_ip": "10.213.0.12"},
        {**_replica("RUNNING"), "node_ip": "10.213.0.11"},
        {**_replica("STARTING"), "node_ip": "10.213.0.11"},
    ]
    phases = model_phases(_platform([_deployment("b-vit", "UPDATING", replicas)]), [])
    (phase,) = [p for p in phases if p.model_ids == ("b-vit",)]
    assert phase.replica_nodes == ("10.213.0.11", "10.213.0.12")
    assert "10.213.0.11,10.213.0.12" in describe([phase]).splitlines()[1]


def test_the_platform_as_one_application_while_it_builds_and_when_its_build_failed():
    building = _platform([], status="DEPLOYING")
    assert {(p.model_ids, p.phase, p.detail) for p in model_phases(building, [])} == {
        (("b-vit",), LOADING, "building the application"),
        (("c-vit", "d-vit"), LOADING, "building the application"),
        (("org/e-vit",), LOADING, "building the application"),
        (("f-vit",), LOADING, "building the application"),
    }
    error = "Traceback (most recent call last):\n  ...\nconfigs.ConfigError: models[0]: bad\n"
    failed = _platform([], status="DEPLOY_FAILED", message=error)
    assert {p.phase for p in model_phases(failed, [])} == {FAILED}
    assert model_phases(failed, [])[0].detail == "configs.ConfigError: models[0]: bad"


def test_a_model_application_whose_build_failed_is_failed():
    details = {"applications": {"platform.chat": _app("chat", "HEALTHY", [])}}
    app = details["applications"]["platform.chat"]
    app.update(status="DEPLOY_FAILED", message="ImportError: no module named vllm", deployments={})
    assert [(p.phase, p.detail) for p in model_phases(details, [])] == [
        (FAILED, "ImportError: no module named vllm")
    ]


def test_the_seeds_llm_configs_and_other_applications():
    details = _platform(
        [_deployment("chat", "HEALTHY", [_replica("RUNNING")])],
        llm_configs=[{"model_loading_config": {"model_id": "chat", "model_source": "org/llm"}}],
    )
    details["applications"]["other"] = {
        "status": "RUNNING",
        "deployed_app_config": {"import_path": "someone.elses:app", "args": {}},
        "deployments": {"Other": _deployment("Other", "HEALTHY", [])},
    }
    assert [(p.app, p.model_ids, p.phase) for p in model_phases(details, [])] == [
        ("platform", ("chat",), READY)
    ]


def test_each_entrys_engine_deployment_is_the_one_the_config_builds():
    config = load_platform_config({"models": ONE_APP_MODELS, "groups": ONE_APP_GROUPS})
    built = {model.model_id: spec.name for spec in config.deployments() for model in spec.models}
    assert (
        {
            entry["model_loading_config"]["model_id"]: entry_deployment_name(
                entry, entry["model_loading_config"]["model_id"]
            )
            for entry in ONE_APP_MODELS
        }
        == built
        == {
            "b-vit": "b-vit",
            "c-vit": "small",
            "d-vit": "small",
            "org/e-vit": "org-e-vit",
            "f-vit": "named",
        }
    )
