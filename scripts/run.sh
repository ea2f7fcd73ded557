#!/usr/bin/env bash
# The main job: Rasa with the ServiceNow channel, against the bundled
# emulator unless SERVICENOW_INSTANCE_URL points at a real instance.
#
# One Ctrl-C stops everything with exit status 0 (scripts/processes.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY="$VENV/bin/python"
# Loopback unless told otherwise: `--enable-api` serves Rasa's whole HTTP API
# (trackers, model replacement), always behind a token (RASA_AUTH_TOKEN, or one
# generated per run).
RASA_HOST=${RASA_HOST:-127.0.0.1}
RASA_PORT=${RASA_PORT:-5005}
EMULATOR_HOST=${EMULATOR_HOST:-127.0.0.1}
EMULATOR_PORT=${EMULATOR_PORT:-8181}
MODEL=${MODEL:-models/demo.tar.gz}
# Full logs of what does not print here (the emulator's requests); kept after the stop.
LOG_DIR=${LOG_DIR:-logs}
# Where the generated token for Rasa's HTTP API is written (mode 600), for a second terminal.
RASA_TOKEN_FILE=${RASA_TOKEN_FILE:-.rasa-token}
# VERBOSE=1: every log line of Rasa and the emulator, as they come.
VERBOSE=${VERBOSE:-}
# Third-party deprecation notices (TensorFlow, jax, pkg_resources, matplotlib) drown the useful
# log lines. Sanic and Rasa put filters in front of PYTHONWARNINGS; quiet_rasa.py keeps it in force.
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::DeprecationWarning}
export SQLALCHEMY_SILENCE_UBER_WARNING=1 TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2} RASA_TELEMETRY_ENABLED=${RASA_TELEMETRY_ENABLED:-false}
# quiet_rasa.py shows the channel's lines and Rasa's warnings; QUIET_RASA=0 shows all of Rasa's.
if [ -n "$VERBOSE" ]; then export QUIET_RASA=0; else export QUIET_RASA=${QUIET_RASA:-1}; fi
RASA=("$PY" scripts/quiet_rasa.py)
# SERVICENOW_LOG_FORMAT=json: one JSON object per log line (channel option log_format).
export SERVICENOW_LOG_FORMAT=${SERVICENOW_LOG_FORMAT:-}

if [ -n "${RASA_CORS:-}" ] && [ "$RASA_CORS" = "*" ]; then
  case "$RASA_HOST" in
    127.*|localhost|::1|"[::1]") ;;
    *)
      echo "error: RASA_CORS='*' lets any web page call Rasa's HTTP API on $RASA_HOST; name the origins instead." >&2
      exit 2
      ;;
  esac
fi

# webhook (default): the channel's own page and endpoints. socketio: the socket.io
# flavour, with the stock rasa-webchat widget (fetched from the npm registry) on its own page.
FRONTEND=${SERVICENOW_FRONTEND:-webhook}
case "$FRONTEND" in
  webhook)
    CREDENTIALS=${CREDENTIALS:-credentials.yml}
    channel_route=servicenow
    # The chat page is served by Rasa itself: same origin, no CORS needed.
    page_origins=""
    ;;
  socketio)
    CREDENTIALS=${CREDENTIALS:-credentials-socketio.yml}
    channel_route=servicenow_socketio
    WEBCHAT_HOST=${WEBCHAT_HOST:-127.0.0.1}
    WEBCHAT_PORT=${WEBCHAT_PORT:-8080}
    # The widget's page is another origin, which Rasa's CORS answer must name.
    page_origins="http://$WEBCHAT_HOST:$WEBCHAT_PORT"
    [ "$WEBCHAT_HOST" = "127.0.0.1" ] && page_origins+=" http://localhost:$WEBCHAT_PORT"
    # Before anything starts: offline without a cached bundle is an error worth seeing first.
    "$PY" scripts/rasa_webchat.py fetch >/dev/null
    ;;
  *)
    echo "error: SERVICENOW_FRONTEND=$FRONTEND; use webhook (the default) or socketio" >&2
    exit 2
    ;;
esac

# Rasa's HTTP API: always a token; CORS for the pages this script serves, unless RASA_CORS says otherwise.
if [ -z "${RASA_AUTH_TOKEN:-}" ]; then
  RASA_AUTH_TOKEN=$("$PY" scripts/runkit.py token)
  token_source="generated for this run"
else
  token_source="from RASA_AUTH_TOKEN"
fi
(umask 077 && printf '%s\n' "$RASA_AUTH_TOKEN" >"$RASA_TOKEN_FILE")
rasa_guard=(--auth-token "$RASA_AUTH_TOKEN")
cors=${RASA_CORS-$page_origins}
# shellcheck disable=SC2206  # several origins, space-separated
[ -n "$cors" ] && rasa_guard+=(--cors $cors)

mkdir -p "$LOG_DIR"

# shellcheck source=scripts/processes.sh
. scripts/processes.sh

export SERVICENOW_API=${SERVICENOW_API:-connect}
export SERVICENOW_CHAT_PAGE=${SERVICENOW_CHAT_PAGE:-true}

console=""
emulator_log=""
if [ -z "${SERVICENOW_INSTANCE_URL:-}" ]; then
  emulator_args=()
  if [ "$SERVICENOW_API" = "virtual_agent" ]; then
    # The emulator pushes Virtual Agent callbacks to this Rasa, with a shared secret.
    export SERVICENOW_WEBHOOK_SECRET=${SERVICENOW_WEBHOOK_SECRET:-$("$PY" -c 'import secrets; print(secrets.token_hex(16))')}
    emulator_args+=(--set "va_callback_url=http://$RASA_HOST:$RASA_PORT/webhooks/$channel_route/callback"
                    --set "va_callback_auth={\"X-Webhook-Secret\": \"$SERVICENOW_WEBHOOK_SECRET\"}")
    # No push retries, as ServiceNow documents none: a push Rasa missed comes
    # back through reconciliation (docs/reliability.md).
  fi
  # The control plane's token: the console link below carries it (docs/emulator.md, "Control-plane security").
  export EMULATOR_CONTROL_TOKEN=${EMULATOR_CONTROL_TOKEN:-$("$PY" -c 'import secrets; print(secrets.token_urlsafe(24))')}
  emulator_log="$LOG_DIR/emulator.log"
  : >"$emulator_log"
  # Every request goes to the log file (--verbose); this terminal shows the
  # emulator's warnings and errors only (every line with VERBOSE=1): the
  # channel's own lines already tell the handoff's progress.
  if [ -n "$VERBOSE" ]; then shown='.'; else shown='\b(WARNING|ERROR|CRITICAL)\b|Traceback'; fi
  "${OWN_GROUP[@]}" "$PY" -m connectors.servicenow.emulator --host "$EMULATOR_HOST" --port "$EMULATOR_PORT" \
    --verbose "${emulator_args[@]+"${emulator_args[@]}"}" >"$emulator_log" 2>&1 &
  started "the emulator"
  emulator_pid=$!
  for _ in $(seq 1 100); do
    grep -q "listening on" "$emulator_log" && break
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$emulator_log"; echo "error: the ServiceNow emulator did not start" >&2; exit 1; }
    sleep 0.1
  done
  grep -q "listening on" "$emulator_log" || { cat "$emulator_log"; echo "error: the ServiceNow emulator did not start in 10 s" >&2; exit 1; }
  "${OWN_GROUP[@]}" "$PY" scripts/runkit.py follow "$emulator_log" --pid "$emulator_pid" --show "$shown" --prefix "[emulator] " &
  started "the emulator's log viewer"
  export SERVICENOW_INSTANCE_URL="http://$EMULATOR_HOST:$EMULATOR_PORT"
  export SERVICENOW_USERNAME=${SERVICENOW_USERNAME:-rasa.integration}
  export SERVICENOW_PASSWORD=${SERVICENOW_PASSWORD:-secret}
  if [ "$SERVICENOW_API" = "connect" ]; then
    export SERVICENOW_QUEUE_ID=${SERVICENOW_QUEUE_ID:-$("$PY" -c 'from connectors.servicenow.emulator import DEFAULT_QUEUE_SYS_ID; print(DEFAULT_QUEUE_SYS_ID)')}
  fi
  target="the bundled ServiceNow emulator at $SERVICENOW_INSTANCE_URL"
  console="  Agent console:  http://$EMULATOR_HOST:$EMULATOR_PORT/__emu/console#token=$EMULATOR_CONTROL_TOKEN
                  (play the human agent)"
else
  target="ServiceNow at $SERVICENOW_INSTANCE_URL"
fi

# Every variable credentials.yml names must exist; empty means "not set".
for name in API USERNAME PASSWORD CLIENT_ID CLIENT_SECRET QUEUE_ID CALLBACK_URL POLL_INTERVAL WEBHOOK_SECRET CHAT_PAGE REDIS_URL; do
  export "SERVICENOW_$name=$(printenv "SERVICENOW_$name" || true)"
done

case "$SERVICENOW_API" in
  virtual_agent) api_name="Virtual Agent API (ServiceNow pushes agent messages to Rasa)" ;;
  connect) api_name="Connect Support API (Rasa polls for agent messages)" ;;
  *) api_name="api $SERVICENOW_API" ;;
esac

ready_urls=("http://$RASA_HOST:$RASA_PORT/webhooks/$channel_route/")
if [ "$FRONTEND" = "socketio" ]; then
  socketio_path=$("$PY" scripts/runkit.py socketio-path "$CREDENTIALS")
  "${OWN_GROUP[@]}" "$PY" scripts/rasa_webchat.py serve --rasa-url "http://$RASA_HOST:$RASA_PORT" \
    --socketio-path "$socketio_path" --host "$WEBCHAT_HOST" --port "$WEBCHAT_PORT" --quiet &
  started "the rasa-webchat page"
  ready_urls+=("http://$WEBCHAT_HOST:$WEBCHAT_PORT/")
  pages="  rasa-webchat:   http://$WEBCHAT_HOST:$WEBCHAT_PORT/   (the stock widget, socketPath $socketio_path)"
  walkthrough="docs/socketio.md"
else
  pages="  Chat page:      http://$RASA_HOST:$RASA_PORT/webhooks/servicenow/chat
                  (?sender=<id> opens a given conversation)"
  walkthrough='README.md, "Try it"'
fi

echo
echo "  Starting Rasa with the ServiceNow handoff channel ($FRONTEND flavour, $api_name),"
echo "  talking to $target. Loading the model takes a few seconds..."
echo

"${OWN_GROUP[@]}" "${RASA[@]}" run --model "$MODEL" --enable-api --credentials "$CREDENTIALS" \
  --interface "$RASA_HOST" --port "$RASA_PORT" "${rasa_guard[@]}" ${RASA_ARGS:-} &
started "Rasa"

LOGS_HINT=$emulator_log
case "$RASA_HOST" in 0.0.0.0|::|"[::]") api_host=127.0.0.1 ;; *) api_host=$RASA_HOST ;; esac
wait_until_ready "${ready_urls[@]}"

cat <<MSG

  Ready: Rasa with the ServiceNow handoff channel, $api_name,
  talking to $target.

$pages
${console:+$console
}  Rasa's HTTP API needs its token ($token_source, also in $RASA_TOKEN_FILE):
                  export RASA_TOKEN=$RASA_AUTH_TOKEN
                  curl -s "$api_host:$RASA_PORT/conversations/<sender>/tracker?token=\$RASA_TOKEN"
${emulator_log:+  Logs:           $emulator_log (every request the emulator answered)
}  Walk-through:   $walkthrough
  Stop:           Ctrl-C

MSG

run_until_stopped
