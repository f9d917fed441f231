#!/usr/bin/env bash
# The mechanical checks, in order: ruff (lint, then format), mypy, import-linter's layers contract
# (tools and settings in requirements-dev.txt and pyproject.toml), then the docs built with MkDocs
# in strict mode (mkdocs.yml: a broken link, a missing page or anchor fails). One line per check;
# the first that fails prints its tool's output and ends the script with its exit status.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

check() {
  local name=$1 output status
  shift
  output=$("$@" 2>&1)
  status=$?
  if [ "$status" -ne 0 ]; then
    echo "$name: FAILED ($*)"
    echo "$output"
    exit "$status"
  fi
  echo "$name: ok"
}

check "ruff check" "$VENV/bin/ruff" check .
check "ruff format" "$VENV/bin/ruff" format --check .
check "mypy" "$VENV/bin/python" -m mypy
check "lint-imports" env PYTHONPATH=. "$VENV/bin/lint-imports"
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
# Material's notice about MkDocs 2.0 is not a warning of these docs
check "mkdocs" env NO_MKDOCS_2_WARNING=1 "$VENV/bin/mkdocs" build --strict --site-dir "$site"
