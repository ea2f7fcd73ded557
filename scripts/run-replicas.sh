#!/usr/bin/env bash
# Two replicas of the demo bot as one deployment: a throwaway redis-server
# (handoff state, outbox, leases, and Rasa's lock store), a shared SQL
# tracker store (a sqlite file), the ServiceNow emulator, and two
# `rasa run` with the same credentials and redis_url on two ports.
# docs/deployment.md, "Many replicas", explains what this shows.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
HOST=${RASA_HOST:-127.0.0.1}
PORT_A=${RASA_PORT_A:-5005}
PORT_B=${RASA_PORT_B:-5006}
EMULATOR_PORT=${EMULATOR_PORT:-8181}
REDIS_PORT=${REDIS_PORT:-6390}
REDIS_SERVER=${REDIS_SERVER:-$(command -v redis-server || true)}
MODEL=${MODEL:-models/demo.tar.gz}
# As scripts/run.sh: quiet_rasa.py keeps third-party deprecation notices out of the logs.
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::DeprecationWarning}
export SQLALCHEMY_SILENCE_UBER_WARNING=1 TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2} RASA_TELEMETRY_ENABLED=${RASA_TELEMETRY_ENABLED:-false}
RASA=("$VENV/bin/python" scripts/quiet_rasa.py)
[ -n "$REDIS_SERVER" ] || { echo "error: redis-server not found (Debian: apt-get install redis-server)" >&2; exit 1; }

# Rasa's HTTP API (--enable-api) is protected by --auth-token only: the same
# rules as scripts/run.sh (docs/security.md).
rasa_guard=()
case "$HOST" in
  127.*|localhost|::1|"[::1]")
    rasa_guard+=(--cors "${RASA_CORS:-*}")
    [ -n "${RASA_AUTH_TOKEN:-}" ] && rasa_guard+=(--auth-token "$RASA_AUTH_TOKEN")
    ;;
  *)
    if [ -z "${RASA_AUTH_TOKEN:-}" ]; then
      echo "error: RASA_HOST=$HOST serves Rasa's HTTP API beyond this machine; set RASA_AUTH_TOKEN" >&2
      echo "       or keep the default RASA_HOST=127.0.0.1. See docs/security.md." >&2
      exit 2
    fi
    if [ "${RASA_CORS:-}" = "*" ]; then
      echo "error: RASA_CORS='*' lets any web page call Rasa's HTTP API on $HOST; name the origins instead." >&2
      exit 2
    fi
    rasa_guard+=(--auth-token "$RASA_AUTH_TOKEN")
    [ -n "${RASA_CORS:-}" ] && rasa_guard+=(--cors "$RASA_CORS")
    ;;
esac

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

wait_for_line() {  # file pattern what
  for _ in $(seq 1 100); do grep -q "$2" "$1" && return 0; sleep 0.1; done
  cat "$1"; echo "error: $3 did not start in 10 s" >&2; exit 1
}

# AOF on, as in production (docs/deployment.md, Persistence); small stream nodes (Memory).
"$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$work" --appendonly yes --save "" \
  --stream-node-max-bytes 256 --daemonize no --logfile "$work/redis.log" &
pids+=($!)
for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/"$REDIS_PORT") 2>/dev/null && break
  sleep 0.1
done

export SERVICENOW_API=${SERVICENOW_API:-virtual_agent}
export SERVICENOW_CHAT_PAGE=true
export SERVICENOW_WEBHOOK_SECRET=${SERVICENOW_WEBHOOK_SECRET:-$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(16))')}
emulator_args=()
if [ "$SERVICENOW_API" = "virtual_agent" ]; then
  # ServiceNow pushes to replica B only: what A's users see came through Redis.
  emulator_args+=(--set "va_callback_url=http://$HOST:$PORT_B/webhooks/servicenow/callback"
                  --set "va_callback_auth={\"X-Webhook-Secret\": \"$SERVICENOW_WEBHOOK_SECRET\"}")
  # No push retries, as ServiceNow documents none: reconciliation recovers missed pushes.
fi
# The control plane's token: the console link below carries it (docs/emulator.md, "Control-plane security").
export EMULATOR_CONTROL_TOKEN=${EMULATOR_CONTROL_TOKEN:-$("$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(24))')}
"$VENV/bin/python" -m connectors.servicenow.emulator --host 127.0.0.1 --port "$EMULATOR_PORT" \
  "${emulator_args[@]+"${emulator_args[@]}"}" >"$work/emulator.log" 2>&1 &
pids+=($!)
wait_for_line "$work/emulator.log" "listening on" "the ServiceNow emulator"

export SERVICENOW_INSTANCE_URL="http://127.0.0.1:$EMULATOR_PORT"
export SERVICENOW_USERNAME=rasa.integration SERVICENOW_PASSWORD=secret
export SERVICENOW_QUEUE_ID=$("$VENV/bin/python" -c 'from connectors.servicenow.emulator import DEFAULT_QUEUE_SYS_ID; print(DEFAULT_QUEUE_SYS_ID)')
export SERVICENOW_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
for name in CLIENT_ID CLIENT_SECRET CALLBACK_URL POLL_INTERVAL LOG_FORMAT; do
  export "SERVICENOW_$name=$(printenv "SERVICENOW_$name" || true)"
done

cat >"$work/endpoints.yml" <<YML
tracker_store:
  type: SQL
  dialect: sqlite
  db: $work/trackers.db
lock_store:
  type: redis
  url: 127.0.0.1
  port: $REDIS_PORT
  db: 1
YML

for port in "$PORT_A" "$PORT_B"; do
  "${RASA[@]}" run --model "$MODEL" --enable-api --credentials credentials.yml --endpoints "$work/endpoints.yml" \
    --interface "$HOST" --port "$port" "${rasa_guard[@]+"${rasa_guard[@]}"}" >"$work/rasa-$port.log" 2>&1 &
  pids+=($!)
done

cat <<MSG

  Two replicas of one deployment ($SERVICENOW_API API), sharing redis-server on port $REDIS_PORT:
  Replica A:      http://$HOST:$PORT_A/webhooks/servicenow/chat
  Replica B:      http://$HOST:$PORT_B/webhooks/servicenow/chat   (ServiceNow's callbacks go here)
  Agent console:  http://127.0.0.1:$EMULATOR_PORT/__emu/console#token=$EMULATOR_CONTROL_TOKEN
  Logs:           $work/rasa-$PORT_A.log, $work/rasa-$PORT_B.log (tail -f them)
  Start a handoff on A, answer in the console, open the same sender on B.

MSG
wait "${pids[@]}"
