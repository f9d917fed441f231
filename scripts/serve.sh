#!/usr/bin/env bash
# Install what is missing, then serve a config (default: model_config.yaml) on 127.0.0.1:8000.
#   scripts/serve.sh [CONFIG [deploy_app.py options...]]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
export RAY_USAGE_STATS_ENABLED=${RAY_USAGE_STATS_ENABLED:-0}
exec .venv/bin/python deploy_app.py --config "${1:-model_config.yaml}" "${@:2}"
