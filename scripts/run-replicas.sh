#!/usr/bin/env bash
# Two replicas of the demo bot as one deployment: a throwaway redis-server
# (handoff state, outbox, leases, and Rasa's lock store), a shared SQL
# tracker store (a sqlite file), the ServiceNow emulator, and two
# `rasa run` with the same credentials and redis_url on two ports.
# docs/deployment.md, "Many replicas", explains what this shows.
#
# The Virtual Agent API by default (`make run` uses Connect): ServiceNow's
# callbacks go to replica B only, so what replica A's users see came through
# Redis. SERVICENOW_API=connect shows shared polling instead.
# One Ctrl-C stops everything with exit status 0 (scripts/processes.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY="$VENV/bin/python"
HOST=${RASA_HOST:-127.0.0.1}
PORT_A=${RASA_PORT_A:-5005}
PORT_B=${RASA_PORT_B:-5006}
EMULATOR_PORT=${EMULATOR_PORT:-8181}
REDIS_PORT=${REDIS_PORT:-6390}
REDIS_SERVER=${REDIS_SERVER:-$(command -v redis-server || true)}
MODEL=${MODEL:-models/demo.tar.gz}
# Every process's log, kept after the stop (each run starts them afresh).
LOG_DIR=${LOG_DIR:-logs/replicas}
RASA_TOKEN_FILE=${RASA_TOKEN_FILE:-.rasa-token}
# As scripts/run.sh: quiet_rasa.py keeps third-party deprecation notices out of the logs.
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::DeprecationWarning}
export SQLALCHEMY_SILENCE_UBER_WARNING=1 TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2} RASA_TELEMETRY_ENABLED=${RASA_TELEMETRY_ENABLED:-false}
RASA=("$PY" scripts/quiet_rasa.py)
[ -n "$REDIS_SERVER" ] || { echo "error: redis-server not found (Debian: apt-get install redis-server)" >&2; exit 1; }

if [ "${RASA_CORS:-}" = "*" ]; then
  echo "error: RASA_CORS='*' lets any web page call Rasa's HTTP API; name the origins instead." >&2
  exit 2
fi
# Rasa's HTTP API: the same token on both replicas (scripts/run.sh, docs/security.md).
if [ -z "${RASA_AUTH_TOKEN:-}" ]; then
  RASA_AUTH_TOKEN=$("$PY" scripts/runkit.py token)
fi
(umask 077 && printf '%s\n' "$RASA_AUTH_TOKEN" >"$RASA_TOKEN_FILE")
rasa_guard=(--auth-token "$RASA_AUTH_TOKEN")
# shellcheck disable=SC2206  # several origins, space-separated
[ -n "${RASA_CORS:-}" ] && rasa_guard+=(--cors $RASA_CORS)

mkdir -p "$LOG_DIR"
LOG_DIR=$(cd "$LOG_DIR" && pwd)
LOGS_HINT="$LOG_DIR/"
# Redis's data and the tracker database are throwaway: removed at the stop.
work=$(mktemp -d)

# shellcheck source=scripts/processes.sh
. scripts/processes.sh
trap 'stop_all; rm -rf "$work"' EXIT

# AOF on, as in production (docs/deployment.md, Persistence); small stream nodes (Memory).
"${OWN_GROUP[@]}" "$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$work" --appendonly yes --save "" \
  --stream-node-max-bytes 256 --daemonize no --logfile "$LOG_DIR/redis.log" &
started "redis-server"
for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/"$REDIS_PORT") 2>/dev/null && break
  kill -0 "${pids[-1]}" 2>/dev/null || { cat "$LOG_DIR/redis.log"; echo "error: redis-server did not start" >&2; exit 1; }
  sleep 0.1
done

export SERVICENOW_API=${SERVICENOW_API:-virtual_agent}
export SERVICENOW_CHAT_PAGE=true
export SERVICENOW_WEBHOOK_SECRET=${SERVICENOW_WEBHOOK_SECRET:-$("$PY" -c 'import secrets; print(secrets.token_hex(16))')}
emulator_args=()
if [ "$SERVICENOW_API" = "virtual_agent" ]; then
  # ServiceNow pushes to replica B only: what A's users see came through Redis.
  emulator_args+=(--set "va_callback_url=http://$HOST:$PORT_B/webhooks/servicenow/callback"
                  --set "va_callback_auth={\"X-Webhook-Secret\": \"$SERVICENOW_WEBHOOK_SECRET\"}")
  # No push retries, as ServiceNow documents none: reconciliation recovers missed pushes.
fi
# The control plane's token: the console link below carries it (docs/emulator.md, "Control-plane security").
export EMULATOR_CONTROL_TOKEN=${EMULATOR_CONTROL_TOKEN:-$("$PY" -c 'import secrets; print(secrets.token_urlsafe(24))')}
: >"$LOG_DIR/emulator.log"
"${OWN_GROUP[@]}" "$PY" -m connectors.servicenow.emulator --host 127.0.0.1 --port "$EMULATOR_PORT" \
  --verbose "${emulator_args[@]+"${emulator_args[@]}"}" >"$LOG_DIR/emulator.log" 2>&1 &
started "the emulator"
for _ in $(seq 1 100); do
  grep -q "listening on" "$LOG_DIR/emulator.log" && break
  kill -0 "${pids[-1]}" 2>/dev/null || { cat "$LOG_DIR/emulator.log"; echo "error: the emulator did not start" >&2; exit 1; }
  sleep 0.1
done

export SERVICENOW_INSTANCE_URL="http://127.0.0.1:$EMULATOR_PORT"
export SERVICENOW_USERNAME=rasa.integration SERVICENOW_PASSWORD=secret
export SERVICENOW_QUEUE_ID=$("$PY" -c 'from connectors.servicenow.emulator import DEFAULT_QUEUE_SYS_ID; print(DEFAULT_QUEUE_SYS_ID)')
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
  type: connectors.servicenow.rasa_glue.lock_store.AtomicRedisLockStore
  url: 127.0.0.1
  port: $REDIS_PORT
  db: 1
YML

case "$SERVICENOW_API" in
  virtual_agent) api_name="the Virtual Agent API: ServiceNow pushes agent messages to replica B only" ;;
  connect) api_name="the Connect Support API: one replica at a time polls each chat" ;;
  *) api_name="api $SERVICENOW_API" ;;
esac
echo
echo "  Starting two replicas of one deployment ($api_name),"
echo "  with redis-server on port $REDIS_PORT. Loading the model takes a few seconds..."
echo

replica_pids=()
for port in "$PORT_A" "$PORT_B"; do
  : >"$LOG_DIR/rasa-$port.log"
  "${OWN_GROUP[@]}" "${RASA[@]}" run --model "$MODEL" --enable-api --credentials credentials.yml \
    --endpoints "$work/endpoints.yml" --interface "$HOST" --port "$port" "${rasa_guard[@]}" \
    >"$LOG_DIR/rasa-$port.log" 2>&1 &
  started "replica on port $port"
  replica_pids+=("$!")
done
# The handoff's progress and every warning here, from both replicas; everything in the log files.
for i in 0 1; do
  label=$([ "$i" = 0 ] && echo A || echo B)
  port=$([ "$i" = 0 ] && echo "$PORT_A" || echo "$PORT_B")
  "${OWN_GROUP[@]}" "$PY" scripts/runkit.py follow "$LOG_DIR/rasa-$port.log" --pid "${replica_pids[i]}" \
    --prefix "[$label] " --show 'connectors\.servicenow\.(?!rasa_tuning)|\b(WARNING|ERROR|CRITICAL)\b|Traceback' &
  started "replica $label's log viewer"
done

wait_until_ready "http://$HOST:$PORT_A/webhooks/servicenow/" "http://$HOST:$PORT_B/webhooks/servicenow/"

# One conversation to open on both replicas.
sender="replica-demo-$("$PY" -c 'import secrets; print(secrets.token_hex(3))')"
cat <<MSG

  Ready: both replicas serve one deployment, with $api_name.
  (make run starts one Rasa with the Connect Support API.)

  Replica A:      http://$HOST:$PORT_A/webhooks/servicenow/chat?sender=$sender
  Replica B:      http://$HOST:$PORT_B/webhooks/servicenow/chat?sender=$sender
  Agent console:  http://127.0.0.1:$EMULATOR_PORT/__emu/console#token=$EMULATOR_CONTROL_TOKEN
  Try:            open replica A's link, ask for "live agent", accept in the console and answer;
                  then open replica B's link: the same conversation, the agent's next messages on both.
  Rasa's API:     export RASA_TOKEN=$RASA_AUTH_TOKEN   (also in $RASA_TOKEN_FILE)
  Logs:           $LOG_DIR/ (rasa-$PORT_A.log, rasa-$PORT_B.log, emulator.log, redis.log; kept after the stop)
  Stop:           Ctrl-C

MSG

run_until_stopped
