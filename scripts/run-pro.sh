#!/usr/bin/env bash
# `RASA=pro make run`: scripts/run.sh with Rasa Pro and the CALM example
# (examples/calm). Rasa Pro's CLI needs a licence: RASA_LICENSE (docs/rasa-pro.md).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${RASA_LICENSE:-}${RASA_PRO_LICENSE:-}" ]; then
  echo "error: Rasa Pro's rasa train and rasa run need a licence: export RASA_LICENSE=<your key>" >&2
  echo "       (a free Developer Edition key works; docs/rasa-pro.md), or run plain \`make run\` (Rasa 3.6)." >&2
  exit 2
fi
status=0
scripts/venv-pro.sh || status=$?
if [ "$status" -ne 0 ]; then exit "$status"; fi

export VENV=${VENV_PRO:-.venv-pro}
export LITELLM_LOCAL_MODEL_COST_MAP=${LITELLM_LOCAL_MODEL_COST_MAP:-True}
PROJECT=examples/calm
export MODEL=${MODEL:-$PROJECT/models/calm.tar.gz}
export CREDENTIALS=${CREDENTIALS:-$PROJECT/credentials.yml}

# Train when a training file is newer than the model (rasa train keeps the old file when nothing changed).
if [ ! -f "$MODEL" ] || [ -n "$(find "$PROJECT/config.yml" "$PROJECT/domain.yml" "$PROJECT/data" -newer "$MODEL" -print -quit)" ]; then
  (cd "$PROJECT" && "../../$VENV/bin/rasa" train --fixed-model-name calm --out models)
  touch "$MODEL"
fi
exec scripts/run.sh
