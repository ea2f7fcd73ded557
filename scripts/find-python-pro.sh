#!/usr/bin/env bash
# Print the path of a Python for the Rasa Pro virtualenv (rasa-pro 3.21 runs on
# 3.11 to 3.14; constraints-pro.txt is resolved on 3.11, so 3.11 comes first).
# Looks at $PYTHON_PRO, python3.11 ... python3.14 on PATH, then pyenv's builds.
set -u

works() {
  "$1" -c 'import sys, venv; sys.exit(0 if (3, 11) <= sys.version_info[:2] <= (3, 14) else 1)' >/dev/null 2>&1
}

candidates=()
[ -n "${PYTHON_PRO:-}" ] && candidates+=("$PYTHON_PRO")
root=""
command -v pyenv >/dev/null 2>&1 && root=$(pyenv root 2>/dev/null)
for minor in 11 12 13 14; do
  command -v "python3.$minor" >/dev/null 2>&1 && candidates+=("$(command -v "python3.$minor")")
  for dir in ${root:+"$root"/versions/3.$minor*} "$HOME"/.pyenv/versions/3.$minor*; do
    [ -x "$dir/bin/python3.$minor" ] && candidates+=("$dir/bin/python3.$minor")
  done
done

for candidate in "${candidates[@]+"${candidates[@]}"}"; do
  if works "$candidate"; then
    echo "$candidate"
    exit 0
  fi
done

cat >&2 <<'MSG'
Python 3.11 or newer was not found (Rasa Pro 3.21 needs Python 3.11 to 3.14).
Install it, for example with `pyenv install 3.11`, or point PYTHON_PRO=/path/to/python3.11 at one.
MSG
exit 1
