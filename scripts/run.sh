#!/usr/bin/env bash
# The main job: Rasa with the ServiceNow channel, against the bundled
# emulator unless SERVICENOW_INSTANCE_URL points at a real instance.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
# Loopback unless told otherwise: `--enable-api` exposes Rasa's whole HTTP API
# (trackers, model replacement), so another interface needs a token.
RASA_HOST=${RASA_HOST:-127.0.0.1}
RASA_PORT=${RASA_PORT:-5005}
EMULATOR_HOST=${EMULATOR_HOST:-127.0.0.1}
EMULATOR_PORT=${EMULATOR_PORT:-8181}
MODEL=${MODEL:-models/demo.tar.gz}
# Third-party deprecation notices (TensorFlow, jax, pkg_resources, matplotlib) drown the useful
# log lines. Sanic and Rasa put filters in front of PYTHONWARNINGS; quiet_rasa.py keeps it in force.
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::DeprecationWarning}
export SQLALCHEMY_SILENCE_UBER_WARNING=1 TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2} RASA_TELEMETRY_ENABLED=${RASA_TELEMETRY_ENABLED:-false}
RASA=("$VENV/bin/python" scripts/quiet_rasa.py)
# SERVICENOW_LOG_FORMAT=json: one JSON object per log line (channel option log_format).
export SERVICENOW_LOG_FORMAT=${SERVICENOW_LOG_FORMAT:-}

# Rasa's HTTP API (started with --enable-api) is protected by --auth-token only;
# off loopback, refuse to start without one, and allow only the named origins.
rasa_guard=()
case "$RASA_HOST" in
  127.*|localhost|::1|"[::1]")
    rasa_guard+=(--cors "${RASA_CORS:-*}")
    [ -n "${RASA_AUTH_TOKEN:-}" ] && rasa_guard+=(--auth-token "$RASA_AUTH_TOKEN")
    ;;
  *)
    if [ -z "${RASA_AUTH_TOKEN:-}" ] && [[ " ${RASA_ARGS:-} " != *" --auth-token "* ]]; then
      echo "error: RASA_HOST=$RASA_HOST serves Rasa's HTTP API beyond this machine; set RASA_AUTH_TOKEN" >&2
      echo "       (or pass --auth-token in RASA_ARGS), or keep the default RASA_HOST=127.0.0.1. See docs/security.md." >&2
      exit 2
    fi
    if [ "${RASA_CORS:-}" = "*" ]; then
      echo "error: RASA_CORS='*' lets any web page call Rasa's HTTP API on $RASA_HOST; name the origins instead." >&2
      exit 2
    fi
    [ -n "${RASA_AUTH_TOKEN:-}" ] && rasa_guard+=(--auth-token "$RASA_AUTH_TOKEN")
    [ -n "${RASA_CORS:-}" ] && rasa_guard+=(--cors "$RASA_CORS")
    ;;
esac

# webhook (default): the channel's own page and endpoints. socketio: the socket.io
# flavour, with the stock rasa-webchat widget (fetched from the npm registry) on its own page.
FRONTEND=${SERVICENOW_FRONTEND:-webhook}
case "$FRONTEND" in
  webhook)
    CREDENTIALS=${CREDENTIALS:-credentials.yml}
    channel_route=servicenow
    ;;
  socketio)
    CREDENTIALS=${CREDENTIALS:-credentials-socketio.yml}
    channel_route=servicenow_socketio
    WEBCHAT_HOST=${WEBCHAT_HOST:-127.0.0.1}
    WEBCHAT_PORT=${WEBCHAT_PORT:-8080}
    # Before anything starts: offline without a cached bundle is an error worth seeing first.
    "$VENV/bin/python" scripts/rasa_webchat.py fetch >/dev/null
    ;;
  *)
    echo "error: SERVICENOW_FRONTEND=$FRONTEND; use webhook (the default) or socketio" >&2
    exit 2
    ;;
esac

emulator_pid=""
page_pid=""
console=""
cleanup() {
  if [ -n "$page_pid" ]; then kill "$page_pid" 2>/dev/null || true; wait "$page_pid" 2>/dev/null || true; fi
  if [ -n "$emulator_pid" ]; then kill "$emulator_pid" 2>/dev/null || true; wait "$emulator_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT INT TERM

export SERVICENOW_API=${SERVICENOW_API:-connect}
export SERVICENOW_CHAT_PAGE=${SERVICENOW_CHAT_PAGE:-true}

if [ -z "${SERVICENOW_INSTANCE_URL:-}" ]; then
  emulator_args=()
  if [ "$SERVICENOW_API" = "virtual_agent" ]; then
    # The emulator pushes Virtual Agent callbacks to this Rasa, with a shared secret.
    export SERVICENOW_WEBHOOK_SECRET=${SERVICENOW_WEBHOOK_SECRET:-$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(16))')}
    emulator_args+=(--set "va_callback_url=http://$RASA_HOST:$RASA_PORT/webhooks/$channel_route/callback"
                    --set "va_callback_auth={\"X-Webhook-Secret\": \"$SERVICENOW_WEBHOOK_SECRET\"}")
    # No push retries, as ServiceNow documents none: a push Rasa missed comes
    # back through reconciliation (docs/reliability.md).
  fi
  # The control plane's token: the console link below carries it (docs/emulator.md, "Control-plane security").
  export EMULATOR_CONTROL_TOKEN=${EMULATOR_CONTROL_TOKEN:-$("$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(24))')}
  log=$(mktemp)
  "$VENV/bin/python" -m connectors.servicenow.emulator --host "$EMULATOR_HOST" --port "$EMULATOR_PORT" \
    "${emulator_args[@]+"${emulator_args[@]}"}" >"$log" 2>&1 &
  emulator_pid=$!
  for _ in $(seq 1 100); do
    grep -q "listening on" "$log" && break
    kill -0 "$emulator_pid" 2>/dev/null || { cat "$log"; echo "error: the ServiceNow emulator did not start" >&2; exit 1; }
    sleep 0.1
  done
  grep -q "listening on" "$log" || { cat "$log"; echo "error: the ServiceNow emulator did not start in 10 s" >&2; exit 1; }
  # Follow the emulator's log in this terminal too.
  tail -n +1 -f "$log" --pid "$emulator_pid" | sed -u 's/^/[emulator] /' &
  export SERVICENOW_INSTANCE_URL="http://$EMULATOR_HOST:$EMULATOR_PORT"
  export SERVICENOW_USERNAME=${SERVICENOW_USERNAME:-rasa.integration}
  export SERVICENOW_PASSWORD=${SERVICENOW_PASSWORD:-secret}
  if [ "$SERVICENOW_API" = "connect" ]; then
    export SERVICENOW_QUEUE_ID=${SERVICENOW_QUEUE_ID:-$("$VENV/bin/python" -c 'from connectors.servicenow.emulator import DEFAULT_QUEUE_SYS_ID; print(DEFAULT_QUEUE_SYS_ID)')}
  fi
  target="the bundled ServiceNow emulator at $SERVICENOW_INSTANCE_URL"
  console="  Agent console:     http://$EMULATOR_HOST:$EMULATOR_PORT/__emu/console#token=$EMULATOR_CONTROL_TOKEN   (play the human agent)"
else
  target="ServiceNow at $SERVICENOW_INSTANCE_URL"
fi

# Every variable credentials.yml names must exist; empty means "not set".
for name in API USERNAME PASSWORD CLIENT_ID CLIENT_SECRET QUEUE_ID CALLBACK_URL POLL_INTERVAL WEBHOOK_SECRET CHAT_PAGE REDIS_URL; do
  export "SERVICENOW_$name=$(printenv "SERVICENOW_$name" || true)"
done

if [ "$FRONTEND" = "socketio" ]; then
  socketio_path=$("$VENV/bin/python" -c 'import sys, yaml; print((yaml.safe_load(open(sys.argv[1])).get("connectors.servicenow.ServiceNowSocketIOInput") or {}).get("socketio_path") or "/socket.io")' "$CREDENTIALS")
  "$VENV/bin/python" scripts/rasa_webchat.py serve --rasa-url "http://$RASA_HOST:$RASA_PORT" \
    --socketio-path "$socketio_path" --host "$WEBCHAT_HOST" --port "$WEBCHAT_PORT" &
  page_pid=$!
  cat <<MSG

  Rasa with the ServiceNow handoff channel, socket.io flavour ($SERVICENOW_API API), talking to $target.
  rasa-webchat page: http://$WEBCHAT_HOST:$WEBCHAT_PORT/   (the stock widget, socketPath $socketio_path)
${console:-}
  Walk-through:      docs/socketio.md

MSG
else
  cat <<MSG

  Rasa with the ServiceNow handoff channel ($SERVICENOW_API API), talking to $target.
  Chat page:         http://$RASA_HOST:$RASA_PORT/webhooks/servicenow/chat
${console:-}
  With curl:         curl -s localhost:$RASA_PORT/webhooks/servicenow/webhook -d '{"sender": "me", "message": "hi"}'
                     curl -N localhost:$RASA_PORT/webhooks/servicenow/stream?sender=me
  Walk-through:      README.md, "Try it"

MSG
fi

"${RASA[@]}" run --model "$MODEL" --enable-api --credentials "$CREDENTIALS" \
  --interface "$RASA_HOST" --port "$RASA_PORT" "${rasa_guard[@]+"${rasa_guard[@]}"}" ${RASA_ARGS:-} &
rasa_pid=$!
trap 'kill -TERM $rasa_pid 2>/dev/null; wait $rasa_pid 2>/dev/null; cleanup' EXIT INT TERM
wait "$rasa_pid"
