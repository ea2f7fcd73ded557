"""Control-plane housekeeping: reset, the request log, runtime config, clock validation, the loopback guard."""

from __future__ import annotations

from connectors.servicenow.emulator import DEFAULT_QUEUE_SYS_ID
from connectors.servicenow.emulator.middleware import _is_loopback


async def test_reset_clears_sessions_tokens_faults_log_clock_and_config(client):
    token = (await client.password_token())["access_token"]
    await client.create_session()
    await client.ok("POST", "faults", {"match": {"method": "DELETE"}, "respond": {"status": 500}})
    await client.ok("POST", "config", {"connect_page_size": 1})
    await client.ok("POST", "clock", {"now_ms": 5})
    assert (await client.ok("POST", "reset")) == {"reset": True}
    assert (await client.ok("GET", "sessions"))["sessions"] == []
    assert (await client.ok("GET", "faults"))["faults"] == []
    assert (await client.ok("GET", "config"))["connect_page_size"] == 25
    assert (await client.ok("GET", "clock"))["frozen"] is False
    assert (await client.ok("GET", "requests"))["requests"] == []
    assert (await client.api("GET", "/support/queues", bearer=token)).status == 401
    assert (await client.create_session())["number"] == "CHAT0010001"


async def test_request_log_records_calls_without_secrets(client):
    await client.password_token()
    entry = await client.create_session("hello")
    await client.api("POST", f"/support/sessions/{entry['group']}/leave", {})
    await client.ok("GET", "sessions")
    log = (await client.ok("GET", "requests"))["requests"]
    assert [(r["method"], r["path"], r["status"]) for r in log] == [
        ("POST", "/oauth_token.do", 200),
        ("POST", f"/api/now/connect/support/queues/{DEFAULT_QUEUE_SYS_ID}/sessions", 200),
        ("POST", f"/api/now/connect/support/sessions/{entry['group']}/leave", 200),
    ]
    token_call, create_call, _ = log
    assert token_call["body"]["password"] == "[redacted]"
    assert token_call["body"]["client_secret"] == "[redacted]"
    assert token_call["body"]["username"] == "rasa.integration"
    assert create_call["headers"]["Authorization"] == "Basic [redacted]"
    assert create_call["body"] == {"message": "hello"}
    assert create_call["user"] == "rasa.integration"


async def test_request_log_is_capped_and_can_be_disabled(client):
    await client.ok("POST", "config", {"request_log_limit": 2})
    for _ in range(4):
        await client.api("GET", "/support/queues")
    await client.api("GET", "/support/sessions")
    log = (await client.ok("GET", "requests"))["requests"]
    assert [r["path"] for r in log] == ["/api/now/connect/support/queues", "/api/now/connect/support/sessions"]
    await client.ok("POST", "config", {"log_requests": False})
    await client.api("GET", "/support/queues")
    assert len((await client.ok("GET", "requests"))["requests"]) == 2


async def test_config_patch_validates(client):
    assert (await client.control("POST", "config", {"no_such_key": 1})).status == 400
    assert (await client.control("POST", "config", {"connect_page_size": 0})).status == 400
    assert (await client.control("POST", "config", {"connect_queues": {"short": {"name": "x"}}})).status == 400
    patched = await client.ok("POST", "config", {"greeting_text": "Hello there"})
    assert patched["greeting_text"] == "Hello there"


async def test_clock_validation(client):
    assert (await client.control("POST", "clock", {})).status == 400
    assert (await client.control("POST", "clock", {"now_ms": "soon"})).status == 400
    assert (await client.control("POST", "clock", {"advance_ms": None})).status == 400
    frozen = await client.ok("POST", "clock", {"now_ms": 1000, "advance_ms": 500})
    assert frozen == {"now_ms": 1500, "frozen": True}


async def test_unknown_control_route_is_404_json(client):
    reply = await client.control("POST", "nothing/here")
    assert reply.status == 404 and "error" in reply.body


async def test_control_plane_rejects_non_json_bodies(client):
    reply = await client.request(
        "POST", "/__emu/agent/accept", data=b"[1, 2]", headers={"Content-Type": "application/json"}
    )
    assert reply.status == 400
    # Not JSON at all is refused before any handler (test_control_security.py has the cross-site cases).
    assert (await client.request("POST", "/__emu/agent/accept", data=b"[1, 2]")).status == 415


def test_loopback_detection():
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("::ffff:127.0.0.1")
    assert not _is_loopback("192.168.1.20") and not _is_loopback("10.0.0.1")
