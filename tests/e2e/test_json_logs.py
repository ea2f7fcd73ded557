"""``log_format: json`` in a real ``rasa run``: once the channel has loaded,
every log line is one JSON object, the channel's and Rasa's alike."""

import json

from tests.e2e.conftest import channel_options
from tests.e2e.harness import RasaServer, new_sender, wait_for


def test_rasa_run_logs_json_lines_once_the_channel_is_loaded(e2e_dir, demo_model, emulator, callback):
    options = channel_options(emulator, callback, "connect", log_format="json")
    server = RasaServer(e2e_dir, demo_model, options, name="rasa-json-logs")
    server.start()
    try:
        sender = new_sender()
        server.say(sender, "talk to live agent")
        chat = server.slots(sender)["live_chat_id"]
        emulator.accept(chat)
        emulator.close(chat)
        wait_for(lambda: server.slots(sender)["handoff_active"] is False, what="the handoff to end")
    finally:
        server.stop()
    lines = server.log_path.read_text().splitlines()
    started = next(i for i, line in enumerate(lines) if "Starting Rasa server" in line)
    entries = [json.loads(line) for line in lines[started:] if line.strip()]  # every line parses
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    loggers = {entry["logger"] for entry in entries}
    assert "root" in loggers  # Rasa's own lines
    assert any(name.startswith("connectors.servicenow") for name in loggers)
