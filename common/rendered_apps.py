"""What the rendered Serve config (``builders/render.py``) and the running platform agree on:
the import paths that mark each kind of application (the router finds its models, and the
status their phases, by them), the route of a model's one-hop URL, the deployment that picks
replicas for a model's variants there, and the variable naming the config file the router was
deployed from."""

PLATFORM_IMPORT_PATH = "builders.app_builder:build_app"
ROUTER_IMPORT_PATH = "builders.app_builder:build_router"
MODEL_APP_IMPORT_PATH = "builders.app_builder:build_model_app"
MODEL_ROUTE_PREFIX = "/models/"
VARIANT_ROUTER_DEPLOYMENT = "VariantRouter"
CONFIG_FILE_ENV = "PLATFORM_CONFIG_FILE"
ROUTER_DEPLOYMENT = "MultiModelRouter"  # the router application's one deployment
