#!/usr/bin/env bash
# Install what is missing, then run the unit and integration tests (extra args go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/python -m pytest "$@"
