#!/usr/bin/env bash
# The Rasa Pro suite of `make test`: a virtualenv of its own (.venv-pro, Python
# 3.11+, rasa-pro pinned in constraints-pro.txt), made or refreshed here, then
# the channel-level tests against Rasa Pro's own classes. Without a Python 3.11+
# the suite is skipped with the reason; with REQUIRE_RASA_PRO_TEST set (.ci/run)
# that is a failure. PRO_PYTEST_ARGS replaces the default selection.
set -u
cd "$(dirname "$0")/.."

VENV=${VENV_PRO:-.venv-pro}
STAMP=$VENV/.installed
# Tests that talk to Rasa Pro through its public contract: the unit and store
# tests, the doctor, and the Rasa Pro tests (licensed ones skip without a key).
DEFAULT_SELECTION="tests/unit tests/store tests/doctor tests/pro"

if ! python=$(scripts/find-python-pro.sh); then
  if [ -n "${REQUIRE_RASA_PRO_TEST:-}" ]; then
    echo "error: the Rasa Pro suite cannot run: no Python 3.11+ (REQUIRE_RASA_PRO_TEST is set)" >&2
    exit 1
  fi
  echo "Rasa Pro suite: skipped (no Python 3.11+ found)"
  exit 0
fi

if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))'; then
  rm -rf "$VENV"
fi
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ constraints-pro.txt -nt "$STAMP" ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    echo "Creating $VENV with $python"
    "$python" -m venv "$VENV" || exit 1
  fi
  constraints=constraints-pro.txt
  if ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    # The frozen set is resolved on 3.11 (scipy and numpy pins differ per Python):
    # elsewhere only rasa-pro and the test tools are pinned.
    constraints=$VENV/constraints-direct.txt
    grep -E '^(rasa-pro|rasa-sdk|pytest|pytest-asyncio|pytest-timeout|aioresponses|fakeredis|prometheus_client)==' \
      constraints-pro.txt > "$constraints"
  fi
  echo "Installing Rasa Pro into $VENV (about 2 minutes the first time)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c "$constraints" -e '.[rasa-pro,test]' || exit 1
  touch "$STAMP"
fi

# Rasa Pro's LLM library fetches a price list from the internet on import;
# CI has no internet, and the suite needs no LLM.
export LITELLM_LOCAL_MODEL_COST_MAP=True
export RASA_TELEMETRY_ENABLED=false
# shellcheck disable=SC2086 # PRO_PYTEST_ARGS is split into words on purpose
exec "$VENV/bin/pytest" ${PRO_PYTEST_ARGS:-$DEFAULT_SELECTION}
