"""Each model's phase from Serve's instance details (shaped as ``get_serve_details()`` returns them)."""

from cloud.download_progress import Download
from serve.platform_status import (
    DOWNLOADING,
    FAILED,
    FAILING,
    LOADING,
    READY,
    WAITING,
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
    "The deployment failed to start 2 times in a row. This may be due to a problem with its constructor "
    "or initial health check failing. See controller logs for details. Error:\nTraceback (most recent call "
    'last):\n  File "x.py", line 1\nOSError: no-such-org/no-such-model is not a local folder\n'
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
