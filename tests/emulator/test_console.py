"""The agent console (``/__emu/console``, its assets) and the read-only route it lists chats from (``/__emu/inbox``),
over real sockets. What the page does in a browser is the browser test's business."""

from __future__ import annotations

import logging
import re
import socket
from html.parser import HTMLParser
from pathlib import Path
from typing import AsyncIterator, Dict, List, Optional, Tuple

import aiohttp
import pytest
from aiohttp import web

from connectors.servicenow.emulator import DEFAULT_GREETING, EmulatorConfig, create_app, start_emulator

from .conftest import EmulatorClient
from .va_support import VaClient

ASSET_DIR = Path(__file__).resolve().parents[2] / "connectors" / "servicenow" / "emulator" / "console"
ASSET_TYPES = {
    "console.css": "text/css",
    "console.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
}
#: The hooks the browser test relies on; renaming one breaks it.
TEST_IDS = ("transcript", "reply-input", "send", "accept", "close")
POLL = {"X-Emulator-Console": "poll"}


class _Links(HTMLParser):
    """Every ``src``/``href`` of a page, and any inline ``<script>`` or ``<style>`` content."""

    def __init__(self) -> None:
        super().__init__()
        self.links: List[Tuple[str, str, str]] = []
        self.inline: List[str] = []
        self._inside: Optional[str] = None

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.links.append((tag, name, value))
        self._inside = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag: str) -> None:
        self._inside = None

    def handle_data(self, data: str) -> None:
        if self._inside and data.strip():
            self.inline.append(data)


async def _get(client: EmulatorClient, path: str) -> Tuple[int, str, str, Dict[str, str]]:
    async with client.http.get(client.url + path, allow_redirects=False) as response:
        return response.status, response.content_type, await response.text(), dict(response.headers)


# ---------------------------------------------------------------------------------------------------------------------
# The page and its assets


async def test_console_page_is_served_as_html(client):
    status, content_type, body, headers = await _get(client, "/__emu/console")
    assert (status, content_type) == (200, "text/html")
    assert "charset=utf-8" in headers["Content-Type"].lower()
    assert "<title>Agent console</title>" in body
    assert "ServiceNow emulator" in body
    assert body == (ASSET_DIR / "index.html").read_text(encoding="utf-8")
    for test_id in TEST_IDS:
        assert f'data-testid="{test_id}"' in body
    # The browser may load nothing but this origin's own files, and no inline script.
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self';" in policy and "connect-src 'self'" in policy
    assert headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("name", sorted(ASSET_TYPES))
async def test_console_assets_are_served_with_their_content_types(client, name):
    status, content_type, body, headers = await _get(client, f"/__emu/console/{name}")
    assert (status, content_type) == (200, ASSET_TYPES[name])
    assert body == (ASSET_DIR / name).read_text(encoding="utf-8")
    assert "Content-Security-Policy" in headers


async def test_console_page_references_only_local_assets(client):
    _, _, page, _ = await _get(client, "/__emu/console")
    parser = _Links()
    parser.feed(page)
    assert parser.inline == [], "no inline script or style: the CSP forbids them"
    linked = sorted(value for _, _, value in parser.links)
    assert linked == [
        "/__emu/console/console.css",
        "/__emu/console/console.js",
        "/__emu/console/favicon.svg",
    ]
    for value in linked:
        status, content_type, _, _ = await _get(client, value)
        assert status == 200 and content_type != "text/html", value
    external = re.compile(r"(?:https?:)?//[\w.-]")
    css = (ASSET_DIR / "console.css").read_text(encoding="utf-8")
    assert not re.search(r"@import|url\(", css)
    script = (ASSET_DIR / "console.js").read_text(encoding="utf-8")
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("//"))
    assert not external.search(code), "the console talks to its own origin only"
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "eval(" not in script


async def test_console_unknown_assets_are_404_and_the_slash_redirects(client):
    for path in ("/__emu/console/app.py", "/__emu/console/..%2Fapp.py", "/__emu/console/console.js.map"):
        status, content_type, body, _ = await _get(client, path)
        assert (status, content_type) == (404, "application/json"), path
        assert "error" in body
    status, _, _, headers = await _get(client, "/__emu/console/")
    assert (status, headers["Location"]) == (302, "/__emu/console")


async def test_console_polls_are_logged_at_debug(client, caplog):
    caplog.set_level(logging.INFO, logger="connectors.servicenow.emulator")
    async with client.http.get(client.url + "/__emu/inbox", headers=POLL) as response:
        assert response.status == 200
    await client.ok("GET", "inbox")
    assert "/__emu/inbox" not in caplog.text
    caplog.set_level(logging.DEBUG, logger="connectors.servicenow.emulator")
    await client.ok("GET", "inbox")
    assert "GET /__emu/inbox -> 200" in caplog.text


# ---------------------------------------------------------------------------------------------------------------------
# Loopback only


def _remote_from_header(app: web.Application) -> None:
    """Let a test pose as another client: ``X-Test-Remote`` replaces the peer address the guard checks."""

    @web.middleware
    async def pose(request: web.Request, handler):  # type: ignore[no-untyped-def]
        remote = request.headers.get("X-Test-Remote")
        return await handler(request.clone(remote=remote) if remote else request)

    app.middlewares.insert(0, pose)


@pytest.fixture
async def posing() -> AsyncIterator[str]:
    app = create_app()
    _remote_from_header(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest.mark.parametrize("path", ["/__emu/console", "/__emu/console/console.js", "/__emu/inbox"])
async def test_console_answers_loopback_clients_only(posing, path):
    async with aiohttp.ClientSession() as http:
        for remote, expected in (("192.0.2.10", 403), ("10.1.2.3", 403), ("::1", 200), ("127.0.0.1", 200)):
            async with http.get(posing + path, headers={"X-Test-Remote": remote}) as response:
                assert response.status == expected, (remote, path)
                if expected == 403:
                    assert "loopback" in (await response.json())["error"]


def _non_loopback_address() -> Optional[str]:
    """An IPv4 address of this machine other than loopback, if it has one (no packet is sent)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") or address == "0.0.0.0" else address


async def test_console_refuses_a_real_non_loopback_client():
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    for loopback_only, expected in ((True, 403), (False, 200)):
        emulator = await start_emulator(EmulatorConfig(control_plane_loopback_only=loopback_only), host=address)
        try:
            async with aiohttp.ClientSession() as http:
                for path in ("/__emu/console", "/__emu/console/console.css", "/__emu/inbox"):
                    async with http.get(f"http://{address}:{emulator.port}{path}") as response:
                        assert response.status == expected, (loopback_only, path)
        finally:
            await emulator.close()


# ---------------------------------------------------------------------------------------------------------------------
# GET /__emu/inbox


async def _inbox(client: EmulatorClient) -> Dict:
    return await client.ok("GET", "inbox")


def _chat(inbox: Dict, session: str) -> Dict:
    found = [c for c in inbox["chats"] if c["session"] == session]
    assert len(found) == 1, inbox["chats"]
    return found[0]


async def test_inbox_of_a_fresh_emulator(client):
    await client.ok("POST", "clock", {"now_ms": 1_000_000})
    assert await _inbox(client) == {
        "now_ms": 1_000_000,
        "agent": {"user_name": "beth.anglin", "name": "Beth Anglin"},
        "chats": [],
    }


async def test_inbox_agent_is_the_first_agent_of_the_first_queue(client):
    queues = {"a" * 32: {"name": "HR", "agents": ["fred.luddy", "beth.anglin"]}}
    await client.ok("POST", "config", {"connect_queues": queues})
    assert (await _inbox(client))["agent"] == {"user_name": "fred.luddy", "name": "Fred Luddy"}
    assert (await client.ok("GET", "sessions"))["sessions"] == []  # reading it created nothing


async def test_inbox_follows_a_connect_chat(client):
    await client.ok("POST", "clock", {"now_ms": 1_000_000})
    group = (await client.create_session("My laptop will not boot"))["group"]
    chat = _chat(await _inbox(client), group)
    assert chat["api"] == "connect" and chat["number"] == "CHAT0010001" and chat["state"] == 1
    assert (chat["id"], chat["ref"], chat["status"]) == (group, group, "waiting")
    assert chat["requester"] == "rasa.integration" and chat["requester_name"] == "Rasa Integration"
    assert (chat["started_ms"], chat["updated_ms"], chat["user_messages"]) == (1_000_000, 1_000_000, 1)
    assert chat["last_message"] == {
        "author": "user",
        "text": "My laptop will not boot",
        "sender_name": "Rasa Integration",
        "timestamp": 1_000_000,
    }

    await client.ok("POST", "clock", {"advance_ms": 5_000})
    await client.ok("POST", "agent/accept", {"session": group})
    chat = _chat(await _inbox(client), group)
    assert (chat["status"], chat["started_ms"], chat["updated_ms"]) == ("live", 1_000_000, 1_005_000)
    assert chat["last_message"]["author"] == "agent" and chat["last_message"]["text"] == DEFAULT_GREETING
    assert chat["last_message"]["sender_name"] == "Beth Anglin"

    await client.ok("POST", "agent/message", {"session": group, "text": "Check KB0012345", "work_note": True})
    assert _chat(await _inbox(client), group)["last_message"]["author"] == "note"
    await client.api("POST", f"/conversations/{group}/messages", {"message": "Still broken"})
    chat = _chat(await _inbox(client), group)
    assert (chat["last_message"]["author"], chat["user_messages"]) == ("user", 2)

    await client.ok("POST", "clock", {"advance_ms": 5_000})
    await client.ok("POST", "agent/close", {"session": group})
    chat = _chat(await _inbox(client), group)
    assert (chat["status"], chat["state"], chat["updated_ms"]) == ("closed", 3, 1_010_000)
    assert chat["last_message"]["author"] == "system"
    assert chat["last_message"]["text"] == "Beth Anglin has left the support session"


async def test_inbox_follows_a_virtual_agent_chat(client):
    va = VaClient(client, None)  # callbacks are only logged: no webhook needed here
    await client.ok("POST", "clock", {"now_ms": 2_000_000})
    await va.send("hi", session="web-1")
    assert (await _inbox(client))["chats"] == [], "a conversation with the Virtual Agent only is not an agent's chat"

    await client.ok("POST", "clock", {"advance_ms": 30_000})
    await va.send("I need a human", action="AGENT", session="web-1")
    chat = _chat(await _inbox(client), "web-1")
    assert (chat["api"], chat["state"], chat["status"], chat["ref"]) == ("va", "QUEUED", "waiting", "web-1")
    assert (chat["requester_name"], chat["started_ms"], chat["user_messages"]) == ("abel.tuter", 2_030_000, 2)
    assert chat["last_message"]["author"] == "user"

    await client.ok("POST", "agent/accept", {"session": "web-1"})
    await client.ok("POST", "clock", {"advance_ms": 1_000})
    await va.send(None, action="TYPING", session="web-1")
    await client.ok("POST", "agent/message", {"session": "web-1", "text": "Hi, Beth here"})
    live = _chat(await _inbox(client), "web-1")
    assert (live["status"], live["updated_ms"], live["id"]) == ("live", 2_031_000, chat["id"])
    assert live["last_message"] == {
        "author": "agent",
        "text": "Hi, Beth here",
        "sender_name": "Beth Anglin",
        "timestamp": 2_031_000,
    }

    await client.ok("POST", "agent/close", {"session": "web-1"})
    closed = _chat(await _inbox(client), "web-1")
    assert (closed["state"], closed["status"], closed["last_message"]["author"]) == ("VA", "closed", "system")
    # Asking for an agent again puts the same chat back in the queue.
    await va.send("agent", session="web-1")
    again = _chat(await _inbox(client), "web-1")
    assert (again["status"], again["id"], again["user_messages"]) == ("waiting", chat["id"], 3)


async def test_inbox_lists_chats_in_queue_order_and_names_shared_va_sessions(client):
    va = VaClient(client, None)
    first = (await client.create_session("first"))["group"]
    await va.send("hi", session="shared", user="abel.tuter")
    await va.send("hi", session="shared", user="fred.luddy")
    second = (await client.create_session("second"))["group"]
    await va.send("agent", session="shared", user="fred.luddy")
    await va.send("agent", session="shared", user="abel.tuter")
    chats = (await _inbox(client))["chats"]
    assert [(c["api"], c.get("userId")) for c in chats] == [
        ("connect", None),
        ("connect", None),
        ("va", "fred.luddy"),
        ("va", "abel.tuter"),
    ]
    assert [c["session"] for c in chats[:2]] == [first, second]
    # Both VA chats have clientSessionId "shared": ``ref`` (their interactionId) tells them apart.
    refs = [c["ref"] for c in chats[2:]]
    assert refs == [c["interactionId"] for c in chats[2:]] and refs[0] != refs[1]
    transcript = await client.ok("GET", f"transcript/{refs[1]}")
    assert transcript["session"]["userId"] == "abel.tuter"
    accepted = await client.ok("POST", "agent/accept", {"session": refs[0]})
    assert accepted["session"]["userId"] == "fred.luddy"


async def test_inbox_is_read_only(client):
    va = VaClient(client, None)
    await va.send("agent", session="web-1")
    before = await client.ok("GET", "sessions")
    await _inbox(client)
    await _inbox(client)
    assert await client.ok("GET", "sessions") == before
    status = await client.control("POST", "inbox", {})
    assert status.status == 405



# ---------------------------------------------------------------------------------------------------------------------
# How the console names the user (issue 21 item 5)

SENDER = "3f2a9c1b-5d6e-4f70-8a9b-0c1d2e3f4a5b"


@pytest.mark.parametrize(
    "extra, user, label, named",
    [
        # What the connector sends for a user it knows by name: the user turns of the handoff's history.
        ({"history": [{"displayName": "Virtual Agent", "isBotMessage": True, "value": "Hi"},
                      {"displayName": "Ada Lovelace", "isBotMessage": False, "value": "help"}]},
         SENDER, "Ada Lovelace", True),
        ({"emailId": "ada@example.com"}, SENDER, "ada@example.com", True),
        ({"contextVariables": {"user_name": "Grace Hopper"}}, SENDER, "Grace Hopper", True),
        # A verified user id (a token's preferred_username) is not the conversation id: it names the user.
        ({}, "ada.lovelace", "ada.lovelace", True),
        # The connector's placeholder names nobody; neither does an anonymous sender id.
        ({"history": [{"displayName": "User", "isBotMessage": False, "value": "help"}]}, SENDER,
         "Conversation 3f2a9c1b…", False),
        ({}, SENDER, "Conversation 3f2a9c1b…", False),
    ],
)
async def test_the_console_names_a_virtual_agent_user_by_name_else_by_conversation(client, extra, user, label, named):
    va = VaClient(client, None)
    await va.send("agent", action="AGENT", user=user, clientVariables={"rasa_sender_id": SENDER}, **extra)
    chat = _chat(await _inbox(client), "chat-1")
    assert (chat["user_label"], chat["user_named"], chat["conversation_id"]) == (label, named, SENDER)


async def test_without_a_sender_variable_the_user_id_is_the_conversation(client):
    va = VaClient(client, None)
    await va.send("agent", action="AGENT", user="anonymous-42")
    chat = _chat(await _inbox(client), "chat-1")
    assert (chat["user_label"], chat["user_named"], chat["conversation_id"]) == (
        "Conversation anonymous-42", False, "anonymous-42")


async def test_a_connect_chat_is_named_by_its_number_not_by_the_integration_user(client):
    group = (await client.create_session("hello"))["group"]
    chat = _chat(await _inbox(client), group)
    assert (chat["user_label"], chat["user_named"], chat["conversation_id"]) == (
        "Conversation CHAT0010001", False, "CHAT0010001")
    assert chat["requester_name"] == "Rasa Integration"  # still there: the console shows it as "via ..."

