# The processes of scripts/run.sh and scripts/run-replicas.sh, and how one
# Ctrl-C stops them all (sourced, not run).
#
# Each process runs in a process group of its own (runkit.py own-group): the
# terminal's SIGINT reaches the script only, which stops the processes once
# each, newest first (Rasa before the emulator its shutdown may still call),
# with SIGTERM, waits for each, and exits 0. `make run` gives the script the
# terminal (bash -m), so make itself never sees the Ctrl-C either.
#
# Needs PY (the virtual environment's python).

STOP_TIMEOUT=${STOP_TIMEOUT:-30}
OWN_GROUP=("$PY" scripts/runkit.py own-group)
pids=()
names=()
stopping=""

started() {  # name: the last background job is one of ours
  pids+=("$!")
  names+=("$1")
}

stop_one() {  # pid name
  kill -TERM "$1" 2>/dev/null || return 0
  local waited=0
  while kill -0 "$1" 2>/dev/null; do
    if [ "$waited" -ge $((STOP_TIMEOUT * 10)) ]; then
      echo "$2 did not stop within ${STOP_TIMEOUT} s; killing it" >&2
      kill -KILL "$1" 2>/dev/null || true
      break
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  wait "$1" 2>/dev/null || true
}

stop_all() {
  # A second Ctrl-C while stopping would cut a graceful shutdown short: ignore it.
  trap '' INT TERM HUP
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    stop_one "${pids[i]}" "${names[i]}"
  done
  pids=()
}

trap 'stopping=1' INT TERM HUP
trap 'stop_all' EXIT

# wait_until_ready URL...: 0 once every URL answers; stops everything and
# exits 0 on Ctrl-C meanwhile; exits 1 when a process ends first.
wait_until_ready() {
  local status=0
  "$PY" scripts/runkit.py wait-http "$@" "${pids[@]/#/--pid=}" --timeout 900 &
  local waiter=$!
  wait "$waiter" || status=$?
  if [ -n "$stopping" ]; then
    kill "$waiter" 2>/dev/null || true
    echo; echo "  Stopping..."
    stop_all
    exit 0
  fi
  if [ "$status" -ne 0 ]; then
    echo "error: a process ended before everything was ready (see the lines above${LOGS_HINT:+ and $LOGS_HINT})" >&2
    exit 1
  fi
}

# run_until_stopped: until Ctrl-C (or SIGTERM): then stop everything, exit 0.
# A process that ends by itself stops the rest, with exit status 1.
run_until_stopped() {
  local i status
  while [ -z "$stopping" ]; do
    wait -n 2>/dev/null && status=0 || status=$?
    [ -n "$stopping" ] && break
    for i in "${!pids[@]}"; do
      if ! kill -0 "${pids[i]}" 2>/dev/null; then
        echo "error: ${names[i]} stopped (exit status $status); stopping the rest${LOGS_HINT:+ (see $LOGS_HINT)}" >&2
        exit 1
      fi
    done
  done
  echo; echo "  Stopping..."
  stop_all
  exit 0
}
