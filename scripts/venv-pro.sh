#!/usr/bin/env bash
# Make or refresh the Rasa Pro virtualenv (.venv-pro, or $VENV_PRO): Python
# 3.11+ (scripts/find-python-pro.sh), rasa-pro and everything else pinned by
# constraints-pro.txt, this package in editable mode. Prints nothing when it
# is up to date. Exit 3: no Python 3.11+ (the message says how to get one).
set -u
cd "$(dirname "$0")/.."

VENV=${VENV_PRO:-.venv-pro}
STAMP=$VENV/.installed

# One maker at a time: another make in this checkout may be making it too (the
# second waits, then finds it up to date). flock is util-linux's; without it, no lock.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$VENV.lock"
  flock 9
fi

python=$(scripts/find-python-pro.sh) || exit 3

if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))'; then
  rm -rf "$VENV"
fi
if [ -f "$STAMP" ] && [ ! pyproject.toml -nt "$STAMP" ] && [ ! constraints-pro.txt -nt "$STAMP" ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "Creating $VENV with $python"
  "$python" -m venv "$VENV" || exit 1
fi
constraints=constraints-pro.txt
if ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  # The frozen set is resolved on 3.11 (scipy and numpy pins differ per Python):
  # elsewhere only rasa-pro and the test tools are pinned.
  constraints=$VENV/constraints-direct.txt
  grep -E '^(rasa-pro|rasa-sdk|pytest|pytest-asyncio|pytest-timeout|pytest-xdist|execnet|aioresponses|fakeredis|prometheus_client|mypy)==' \
    constraints-pro.txt > "$constraints"
fi
echo "Installing Rasa Pro into $VENV (about 2 minutes the first time)"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c "$constraints" -e '.[rasa-pro,test]' || exit 1
touch "$STAMP"
