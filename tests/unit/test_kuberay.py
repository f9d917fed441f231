"""KubeRay manifests rendered from the shipped configs, checked against KubeRay's CRD schemas."""

import copy
import os
import re
from pathlib import Path

import pytest
import yaml

from builders.kuberay import WorkerShape, main, render, validate
from tests.unit.config_entries import platform_app, vision_model, vllm_model

ROOT_CONFIGS = ["model_config.yaml", "examples/production.yaml"]


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch, request):
    monkeypatch.chdir(request.config.rootpath)
    monkeypatch.delenv("PLATFORM_API_KEYS", raising=False)  # secrets live on the cluster, not here


@pytest.mark.parametrize("config", ROOT_CONFIGS)
@pytest.mark.parametrize("kind", ["rayservice", "rayjob"])
def test_rendered_manifests_fit_the_crds(config, kind):
    manifest = render(
        kind, config, "registry.example/rayserve-platform:1", "platform", WorkerShape()
    )
    assert validate(manifest) == []


def test_serve_config_is_the_rendered_file_listening_on_the_pod():
    from builders.render import render_serve_config
    from builders.serve_config import load_serve_config

    manifest = render("rayservice", "examples/production.yaml", "img", "platform", WorkerShape())
    served = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    original = yaml.safe_load(open("examples/production.yaml"))
    (platform,) = load_serve_config("examples/production.yaml")[1].values()
    assert (
        served["applications"]
        == render_serve_config(original, {"platform": platform})["applications"]
    )
    router, *models = served["applications"]
    assert (
        router["import_path"] == "builders.app_builder:build_router"
        and "models" not in router["args"]
    )
    assert [app["name"] for app in models] == [
        f"{router['name']}.{spec.name}" for spec in platform.deployments()
    ]  # a group is one app
    assert served["http_options"]["host"] == "0.0.0.0" and served["http_options"]["port"] == 8000


def test_worker_groups_are_sized_from_the_models():
    cluster = render(
        "rayservice", "examples/production.yaml", "img", "p", WorkerShape(8, 2, "32Gi")
    )["spec"]["rayClusterConfig"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    # GPU replicas at minimum: shares 0.4 + 0.4 + 0.15 + 0.05 + 0.2, the 8B model's 1, the 14B
    # model's 2 (4.2 GPUs, 23 CPUs: 3 workers of 8 CPUs); the 8B model autoscales to 4 (7.2 GPUs,
    # 35 CPUs: 5)
    assert (groups["gpu-workers"]["minReplicas"], groups["gpu-workers"]["maxReplicas"]) == (3, 5)
    assert (
        groups["gpu-workers"]["template"]["spec"]["containers"][0]["resources"]["limits"][
            "nvidia.com/gpu"
        ]
        == "2"
    )
    assert (groups["cpu-workers"]["minReplicas"], groups["cpu-workers"]["maxReplicas"]) == (
        1,
        1,
    )  # 8 CPUs
    env = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "RAY_SERVE_ENABLE_HA_PROXY", "value": "1"} in env
    for variable in (
        "PLATFORM_API_KEYS",
        "SEARCH_TEAM_KEY",
    ):  # every key's variable comes from the Secret
        assert {
            "name": variable,
            "valueFrom": {"secretKeyRef": {"name": "rayserve-platform-keys", "key": variable}},
        } in env


def test_workers_narrower_than_a_sharded_replica_are_refused(capsys):
    assert (
        main(
            [
                "rayservice",
                "--config",
                "examples/production.yaml",
                "--image",
                "img",
                "--gpus-per-worker",
                "1",
            ]
        )
        == 1
    )
    assert (
        "qwen2.5-14b-instruct needs 2 GPUs on one node; pass --gpus-per-worker 2"
        in capsys.readouterr().err
    )


def test_a_rendered_clash_is_refused_before_a_manifest_is_written(tmp_path, capsys):
    # The platform "p" and a second platform named like p's rendered model application "p.x".
    path = tmp_path / "clash.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "applications": [
                    platform_app("p", "/a", [vllm_model("x")]),
                    platform_app("p.x", "/b", [vision_model("y")]),
                ]
            }
        )
    )
    assert main(["rayservice", "--config", str(path), "--image", "img"]) == 1
    captured = capsys.readouterr()
    assert 'multiple configs for application "p.x"' in captured.err and captured.out == ""


def test_validation_catches_a_broken_manifest():
    manifest = render("rayservice", "model_config.yaml", "img", "p", WorkerShape())
    broken = copy.deepcopy(manifest)
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplicas"] = "two"
    del broken["spec"]["rayClusterConfig"]["headGroupSpec"]
    problems = validate(broken)
    assert any("minReplicas" in p for p in problems) and any("headGroupSpec" in p for p in problems)


def test_cli_prints_yaml(capsys):
    from deploy_app import main as deploy_app_main  # `python deploy_app.py kuberay ...`

    assert (
        deploy_app_main(
            [
                "kuberay",
                "rayjob",
                "--config",
                "model_config.yaml",
                "--image",
                "img",
                "--entrypoint",
                "python bench/x.py",
            ]
        )
        == 0
    )
    assert yaml.safe_load(capsys.readouterr().out)["spec"]["entrypoint"] == "python bench/x.py"


def _cluster(kind: str = "rayservice", **kwargs) -> dict:
    manifest = render(kind, "examples/production.yaml", "img", "p", WorkerShape(8, 2), **kwargs)
    assert validate(manifest) == []
    spec = manifest["spec"]
    return spec.get("rayClusterConfig") or spec["rayClusterSpec"]


def _containers(cluster: dict) -> list[dict]:
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def _key_variables(container: dict) -> set[str]:
    return {e["name"] for e in container["env"] if "valueFrom" in e}


def test_the_control_plane_is_locked_by_default():
    cluster = _cluster()
    assert cluster["authOptions"] == {"mode": "token", "secretName": "p-ray-token"}
    policy = cluster["networkPolicy"]
    assert policy["mode"] == "DenyAllIngress" and policy["head"] == policy["worker"]
    serve_rule, metrics_rule = policy["head"]["ingressRules"]
    assert serve_rule == {"ports": [{"port": 8000, "protocol": "TCP"}]}  # from anywhere
    assert metrics_rule == {
        "from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
        "ports": [{"port": 8080, "protocol": "TCP"}],
    }
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert 10001 not in {p["containerPort"] for p in head["ports"]}  # no Ray Client
    assert "gcsFaultToleranceOptions" not in cluster  # only when asked


def test_gcs_fault_tolerance_and_secrets_from_the_command_line(capsys):
    argv = ["rayservice", "--config", "examples/production.yaml", "--image", "img"]
    assert (
        main(
            argv
            + ["--gcs-redis-address", "redis.db:6379", "--gcs-redis-password-secret", "redis"]
            + ["--ray-token-secret", "tok", "--metrics-namespace", ""]
        )
        == 0
    )
    cluster = yaml.safe_load(capsys.readouterr().out)["spec"]["rayClusterConfig"]
    assert cluster["gcsFaultToleranceOptions"] == {
        "redisAddress": "redis.db:6379",
        "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "redis", "key": "password"}}},
    }
    assert cluster["authOptions"]["secretName"] == "tok"
    assert len(cluster["networkPolicy"]["worker"]["ingressRules"]) == 1  # the serving port alone


def test_gcs_fault_tolerance_asked_in_the_yaml(tmp_path, capsys):
    raw = yaml.safe_load(Path("examples/production.yaml").read_text())
    raw["applications"][0]["args"]["gcs_fault_tolerance"] = {
        "redis_address": "redis.db:6379",
        "redis_password_secret": "redis",
    }
    config = tmp_path / "ft.yaml"
    config.write_text(yaml.safe_dump(raw))
    argv = ["rayservice", "--config", str(config), "--image", "img"]
    assert main(argv) == 0
    cluster = yaml.safe_load(capsys.readouterr().out)["spec"]["rayClusterConfig"]
    assert cluster["gcsFaultToleranceOptions"]["redisAddress"] == "redis.db:6379"
    assert main(argv + ["--gcs-redis-address", "other:6380"]) == 0  # the flag wins
    cluster = yaml.safe_load(capsys.readouterr().out)["spec"]["rayClusterConfig"]
    assert cluster["gcsFaultToleranceOptions"] == {"redisAddress": "other:6380"}


def test_a_bad_gcs_redis_address_in_the_yaml_names_the_field(tmp_path, capsys):
    raw = yaml.safe_load(Path("examples/production.yaml").read_text())
    raw["applications"][0]["args"]["gcs_fault_tolerance"] = {"redis_address": "no port"}
    config = tmp_path / "ft.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["rayservice", "--config", str(config), "--image", "img"]) == 1
    assert "gcs_fault_tolerance.redis_address" in capsys.readouterr().err


def test_api_keys_reach_only_the_containers_of_a_cluster_that_serves():
    keys = {"PLATFORM_API_KEYS", "SEARCH_TEAM_KEY"}
    assert all(_key_variables(c) == keys for c in _containers(_cluster()))
    assert all(_key_variables(c) == set() for c in _containers(_cluster("rayjob")))
    assert all(_key_variables(c) == keys for c in _containers(_cluster("rayjob", job_serves=True)))


@pytest.mark.parametrize("kind", ["rayservice", "rayjob"])
def test_the_bundled_crds_are_kuberays(kind, request):
    """builders/crds/ is the copy of the shared KubeRay CRDs the manifests are validated with."""
    from builders.kuberay import CRD_DIR

    shared = request.config.rootpath.parent / "shared" / "kuberay-crds"
    if not shared.is_dir():
        pytest.skip("no shared KubeRay CRDs beside this checkout")
    name = f"ray.io_{kind}s.yaml"
    assert (CRD_DIR / name).read_bytes() == (shared / name).read_bytes()


@pytest.mark.parametrize(
    ("config", "tag"),
    [("model_config.yaml", "cpu"), ("examples/production.yaml", "gpu")],
)
def test_the_image_defaults_to_the_tag_the_build_script_gives(config, tag):
    manifest = render("rayservice", config, None, "p", WorkerShape())
    head = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["image"] == f"localhost/rayserve-platform:{tag}"
    script = (Path(__file__).parents[2] / "scripts" / "build_image.sh").read_text()
    assert "TAG=${TAG:-localhost/rayserve-platform:$FLAVOUR}" in script


def test_every_pod_mounts_memory_at_dev_shm():
    """A container's /dev/shm is 64 MiB by default, less than vLLM's engine core needs (160 MiB):
    every engine failed in a container until one was mounted (docs/operating/container.md)."""
    cluster = render(
        "rayservice", "examples/production.yaml", "img", "p", WorkerShape(8, 2, "32Gi")
    )["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    for pod in (group["template"]["spec"] for group in pods):
        volumes = {v["name"]: v for v in pod["volumes"]}
        (mount,) = pod["containers"][0]["volumeMounts"]
        assert mount["mountPath"] == "/dev/shm"
        assert volumes[mount["name"]]["emptyDir"] == {"medium": "Memory"}


@pytest.mark.parametrize("kind", ["rayservice", "rayjob"])
def test_every_pod_runs_haproxy_through_the_platforms_capacity_gate(kind):
    """The gate's HAProxy wrapper is named in the manifest itself, at the path the image keeps it
    (the Dockerfile's WORKDIR): a cluster started from the manifest gets the gate without relying
    on the image's ENV."""
    manifest = render(kind, "model_config.yaml", "img", "platform", WorkerShape())
    spec = manifest["spec"]
    cluster = spec.get("rayClusterConfig") or spec["rayClusterSpec"]  # RayService's, RayJob's
    pods = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    (workdir,) = re.findall(r"^WORKDIR (\S+)$", Path("Dockerfile").read_text(), re.MULTILINE)
    wrapper = Path("scripts/haproxy")
    assert os.access(wrapper, os.X_OK) and "common.haproxy_gate" in wrapper.read_text()
    for pod in pods:
        (container,) = pod["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["RAY_SERVE_HAPROXY_BINARY_PATH"] == f"{workdir}/{wrapper}"
        assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["PLATFORM_HAPROXY_GATE"] == "1"
