"""Model and application entries of a config, as a user writes them, for the render and KubeRay
tests."""


def vllm_model(model_id: str) -> dict:
    return {
        "model_loading_config": {"model_id": model_id, "model_source": "org/llm", "type": "vllm"}
    }


def vision_model(model_id: str, group: str | None = None) -> dict:
    entry = {
        "model_loading_config": {"model_id": model_id, "model_source": "org/vit", "type": "vision"},
        "engine_kwargs": {"task": "image-classification"},
    }
    return {**entry, "group": group} if group else entry


def platform_app(name: str, route_prefix: str, models: list[dict], **args) -> dict:
    return {
        "name": name,
        "route_prefix": route_prefix,
        "import_path": "builders.app_builder:build_app",
        "args": {"models": models, **args},
    }
