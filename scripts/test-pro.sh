#!/usr/bin/env bash
# The Rasa Pro suite of `make test`: the channel-level tests against Rasa Pro's
# own classes, in .venv-pro (scripts/venv-pro.sh makes it). Without a Python
# 3.11+ the suite is skipped with the reason; with REQUIRE_RASA_PRO_TEST set
# (.ci/run) that is a failure. PRO_PYTEST_ARGS replaces the default selection;
# TEST_WORKERS (4 by default, 0: one process) is the number of pytest-xdist workers.
set -u
cd "$(dirname "$0")/.."

VENV=${VENV_PRO:-.venv-pro}
# The unit and store tests, the doctor, and the Rasa Pro tests (licensed ones
# skip without a key). tests/e2e, tests/emulator, tests/bench and tests/install
# run in the Rasa 3.6 suite (rasa run, Rasa-free, or their own virtualenvs).
DEFAULT_SELECTION="tests/unit tests/store tests/doctor tests/pro"

scripts/venv-pro.sh
status=$?
if [ "$status" -eq 3 ]; then
  if [ -n "${REQUIRE_RASA_PRO_TEST:-}" ]; then
    echo "error: the Rasa Pro suite cannot run: no Python 3.11+ (REQUIRE_RASA_PRO_TEST is set)" >&2
    exit 1
  fi
  echo "Rasa Pro suite: skipped (no Python 3.11+ found)"
  exit 0
elif [ "$status" -ne 0 ]; then
  exit "$status"
fi

# Rasa Pro's LLM library fetches a price list from the internet on import;
# CI has no internet, and the suite needs no LLM.
export LITELLM_LOCAL_MODEL_COST_MAP=True
export RASA_TELEMETRY_ENABLED=false
# shellcheck disable=SC2086 # PRO_PYTEST_ARGS is split into words on purpose
exec "$VENV/bin/pytest" -n "${TEST_WORKERS:-4}" ${PRO_PYTEST_ARGS:-$DEFAULT_SELECTION}
