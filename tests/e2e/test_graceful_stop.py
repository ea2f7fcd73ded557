"""A graceful stop (SIGTERM, as a rolling restart sends it) of a real
``rasa run``: the message under way when it comes is delivered and answered,
a request that arrives while the server stops is refused with a 503 it may
send again, nothing fails with a 500 and the replica exits without a trace.

Soak finding 5: the channel closed its ServiceNow client and its store when
Sanic began to stop, while Sanic still served (it runs ``before_server_stop``
first and then waits for the requests under way), so requests that came on
a connection still open met closed clients: 500, ``Session is closed``. With
clients that reopen on demand, such a request was handled by a core that had
stopped (its pollers, timers and tracker writes over): refused now."""

import json
import socket
import threading
import time
from typing import Any, Dict

from tests.e2e.conftest import Handoff, channel_options
from tests.e2e.harness import RasaServer, new_sender, wait_for


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def read_answer(sock: socket.socket) -> Dict[str, Any]:
    """Status and JSON body of one HTTP/1.1 answer (Content-Length framed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "the connection closed in the middle of the answer"
        body += chunk
    return {"status": int(lines[0].split()[1]), "headers": headers, "body": json.loads(body or b"null")}


def test_a_graceful_stop_answers_every_request_and_fails_none(e2e_dir, demo_model, emulator, callback):
    server = RasaServer(e2e_dir, demo_model, channel_options(emulator, callback, "connect"), name="graceful-stop")
    handoff = Handoff("connect", server, emulator, callback)
    server.start()
    try:
        sender = new_sender()
        chat = handoff.start_live(sender)
        # The message under way when SIGTERM comes: ServiceNow takes a second to take it.
        emulator.fault(
            # This message's own call: another POST of the chat (the opening's) would fire the rule while
            # this request is not being handled yet, and a graceful stop closes a connection not yet handled.
            match={"api": "connect", "session": chat, "method": "POST", "path_regex": "/messages$",
                   "body_regex": "sent before the stop"},
            respond={"delay_ms": 1000}, times=1,
        )
        answered: Dict[str, Any] = {}

        def send_before_the_stop() -> None:
            answered["before"] = server.post_raw(json.dumps({"sender": sender, "message": "sent before the stop"}).encode())

        before = threading.Thread(target=send_before_the_stop)
        before.start()

        def fault_fired() -> bool:
            # This rule's own count: the emulator serves every e2e test on this worker, and a rule an
            # earlier test fired made this true at once, so SIGTERM came before this message was sent.
            return any(
                rule["fired"] for rule in emulator.get("faults")["faults"]
                if rule["match"]["session"] == chat and rule["match"]["body_regex"] == "sent before the stop"
            )

        wait_for(fault_fired, what="the message to reach ServiceNow")
        # A request whose body is still on its way when the server begins to stop.
        body = json.dumps({"sender": sender, "message": "sent while the server stops"}).encode()
        late = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        late.sendall(
            b"POST /webhooks/servicenow/webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10]
        )
        assert server.process is not None
        stop_sent = time.monotonic()
        server.process.terminate()
        # Sanic closes its listening socket once the channel's before_server_stop is done.
        wait_for(lambda: refuses_connections(server.port), timeout=30, what="the server to stop listening")
        late.sendall(body[10:])
        answer = read_answer(late)
        late.close()
        before.join(timeout=30)

        assert answered["before"].status_code == 200 and answered["before"].json() == []
        received = handoff.user_messages(sender, chat)
        assert "sent before the stop" in received and "sent while the server stops" not in received
        assert answer["status"] == 503, answer
        assert answer["body"]["reason"] == "ShuttingDown" and answer["headers"]["retry-after"] == "2"
        server.process.wait(timeout=30)
        # No open stream kept it: well within Sanic's 15 s wait for busy connections.
        assert time.monotonic() - stop_sent < 12
        log = server.log_path.read_text(errors="replace")
        assert "Traceback" not in log and "Session is closed" not in log, server.log_tail(80)
    finally:
        server.stop()
