from common.serve_env import STREAMING_ENV, with_replica_env


def test_application_runtime_env_is_kept_and_the_deployment_wins(monkeypatch):
    monkeypatch.delenv("PLATFORM_STREAM_INTERVAL_MS", raising=False)
    app_env = {"working_dir": "s3://bucket/code.zip", "env_vars": {"HF_TOKEN": "t", "PLATFORM_STREAM_INTERVAL_MS": "20"}}
    options = with_replica_env(
        {"num_cpus": 1, "runtime_env": {"pip": ["x"], "env_vars": {"HF_TOKEN": "mine"}}}, inherited=app_env)
    runtime_env = options["runtime_env"]
    assert options["num_cpus"] == 1
    assert runtime_env["working_dir"] == "s3://bucket/code.zip" and runtime_env["pip"] == ["x"]
    assert runtime_env["env_vars"]["HF_TOKEN"] == "mine"
    assert runtime_env["env_vars"]["PLATFORM_STREAM_INTERVAL_MS"] == "20"
    assert runtime_env["env_vars"]["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == \
        STREAMING_ENV["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"]
    assert "RAY_worker_niceness" not in runtime_env["env_vars"]  # a raylet setting, not a replica one


def test_process_environment_overrides_defaults(monkeypatch):
    monkeypatch.setenv("PLATFORM_STREAM_INTERVAL_MS", "3")
    env_vars = with_replica_env({}, inherited={})["runtime_env"]["env_vars"]
    assert env_vars["PLATFORM_STREAM_INTERVAL_MS"] == "3"
