"""The stock rasa-webchat widget (npm ``rasa-webchat@1.0.1``, fetched from the
registry as published) against the socket.io flavour of the channel, in
headless Chromium, with the emulator's agent console as the agent.

The widget's page is served on its own origin, as a team's website would be;
only ``socketUrl``/``socketPath`` point at Rasa. Skipped with a reason when the
bundle cannot be fetched (offline, nothing cached under ``build/``) or Chromium
is missing; ``REQUIRE_BROWSER_TEST=1`` (``.ci/run``) makes either a failure.
Screenshots go to ``test-output/browser/webchat/<backend>/``."""

import json
import os
import re
from pathlib import Path
from typing import Iterator, Tuple

import pytest

from scripts.rasa_webchat import Bundle, FetchError, PageServer, fetch, widget_options
from tests.e2e.conftest import BACKENDS, TEXTS, WEBHOOK_SECRET, channel_options
from tests.e2e.harness import Emulator, RasaServer, wait_for
from tests.e2e.test_browser import TIMEOUT_MS, browser  # noqa: F401 (a fixture, used by name)

ROOT = Path(__file__).resolve().parents[2]
CHANNEL = "connectors.servicenow.ServiceNowSocketIOInput"
ROUTE = "servicenow_socketio"
SOCKETIO_PATH = "/socket.io"
GREETING = "Hello! I'm the virtual assistant"
# Everything the page asks of the world beyond loopback is refused at once and
# recorded: there must be nothing (the stock bundle's stylesheets @import a Google
# web font; the page server drops those rules, scripts/rasa_webchat.py).
OFFSITE = re.compile(r"^https?://(?!127\.0\.0\.1[:/])")
SMUGGLED_LINK = "https://example.com/\n\n[z]:javascript:alert%28document.domain%29\n[Click]\t[z]"


def _unavailable(reason: str) -> None:
    if os.environ.get("REQUIRE_BROWSER_TEST") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def webchat_bundle() -> Bundle:
    try:
        return fetch()
    except FetchError as error:
        _unavailable(f"the rasa-webchat test needs the widget from the npm registry: {error}")


@pytest.fixture(scope="module", params=BACKENDS)
def webchat(request, webchat_bundle: Bundle, e2e_dir, demo_model, emulator: Emulator, callback) -> Iterator[Tuple[RasaServer, PageServer]]:
    """Rasa with the socket.io flavour, and the widget's page on another origin."""
    backend = request.param
    options = channel_options(emulator, callback, backend)
    # Agent messages go to the socket, not to a callback URL; the chat page is the webhook flavour's.
    for webhook_only in ("callback_url", "chat_page"):
        options.pop(webhook_only, None)
    options.update(user_message_evt="user_uttered", bot_message_evt="bot_uttered",
                   session_persistence=True, socketio_path=SOCKETIO_PATH)
    server = RasaServer(e2e_dir, demo_model, options, name=f"rasa-webchat-{backend}", channel=CHANNEL)
    server.backend = backend
    page = PageServer(webchat_bundle, widget_options(server.url, SOCKETIO_PATH, storage="local")).start()
    # As a team would: the page's origin is allowed by Rasa's CORS, nothing else.
    server.extra_args = ["--cors", page.url.rstrip("/")]
    try:
        server.start()
        yield server, page
    finally:
        server.stop()
        page.stop()


@pytest.fixture
def socketio_rasa(webchat, emulator: Emulator) -> RasaServer:
    server = webchat[0]
    if server.backend == "virtual_agent":
        emulator.configure(
            va_callback_url=f"{server.url}/webhooks/{ROUTE}/callback",
            va_callback_auth={"X-Webhook-Secret": WEBHOOK_SECRET},
            va_callback_retries=2, va_callback_retry_delay_ms=300,
        )
    return server


@pytest.fixture
def page_server(webchat) -> PageServer:
    return webchat[1]


def _agent_message_fetched(emulator: Emulator, backend: str, chat: str, before: int) -> bool:
    """The connector has taken the agent's newest message from ServiceNow."""
    if backend == "connect":
        # Two polls after the message was posted: the second one surely started after it.
        return len(emulator.requests_for(chat, "GET", "/messages")) >= before + 2
    callbacks = emulator.get(f"callbacks?session={chat}")
    return len(callbacks["callbacks"]) > before and callbacks["pending"] == 0


def _fetch_count(emulator: Emulator, backend: str, chat: str) -> int:
    if backend == "connect":
        return len(emulator.requests_for(chat, "GET", "/messages"))
    return len(emulator.get(f"callbacks?session={chat}")["callbacks"])


def test_a_handoff_in_the_stock_rasa_webchat_widget(browser, page_server: PageServer, socketio_rasa: RasaServer, emulator: Emulator):  # noqa: F811
    backend = socketio_rasa.backend
    output = ROOT / "test-output" / "browser" / "webchat" / backend
    output.mkdir(parents=True, exist_ok=True)
    user_context = browser.new_context(viewport={"width": 520, "height": 760})
    offsite = []
    user_context.route(OFFSITE, lambda route: (offsite.append(route.request.url), route.abort()))
    user = user_context.new_page()
    # Shown when the test fails: the widget logs its socket's life (connect, session_confirm, errors).
    user.on("console", lambda message: print(f"widget console: {message.text}"))
    agent = browser.new_context(viewport={"width": 1180, "height": 760}).new_page()
    for page in (user, agent):
        page.set_default_timeout(TIMEOUT_MS)

    def user_says(text: str) -> None:
        box = user.locator(".rw-new-message")
        box.fill(text)
        box.press("Enter")

    def bot_lines(text: str):
        return user.locator(".rw-response", has_text=text)

    def agent_sends(text: str) -> None:
        agent.get_by_test_id("reply-input").fill(text)
        agent.get_by_test_id("send").click()

    user.goto(page_server.url)
    # initPayload /greet: the widget greets a new session without the user typing.
    bot_lines(GREETING).first.wait_for()
    session = json.loads(user.evaluate("localStorage.getItem('chat_session')"))["session_id"]
    assert session

    user_says("talk to live agent")
    bot_lines(TEXTS.connecting).wait_for()
    # session_persistence: the widget's session id is the conversation's sender id.
    chat = wait_for(lambda: socketio_rasa.slots(session).get("live_chat_id"), what="the handoff to start")
    assert socketio_rasa.slots(session)["handoff_active"] is True

    agent.goto(f"{emulator.url}/__emu/console")
    agent.locator(f'[data-testid="chat-item"][data-session="{chat}"]').click()
    agent.get_by_test_id("accept").click()
    agent.locator(f'[data-testid="chat-item"][data-session="{chat}"][data-state="live"]').wait_for()
    # Virtual Agent: a servicenow_typing event, which the stock widget must ignore.
    emulator.control("agent/typing", {"session": chat, "on": True})
    agent_sends("Hi, I'm Beth. How can I help?")
    # Shown without the user typing anything.
    bot_lines("Hi, I'm Beth. How can I help?").wait_for()

    user_says("My VPN stopped working this morning.")
    agent.locator('[data-testid="message"][data-author="user"]', has_text="My VPN stopped working").wait_for()

    # The agent writes while the page reloads: the reloaded page asks for the
    # widget's script only after the old page (and its socket) is gone, so the
    # message is sent, and taken by the connector, while no socket is connected.
    during_reload = "While you were away: your VPN profile is reset."
    sent_while_away = []

    def hold_script_until_the_agent_wrote(route) -> None:
        if not sent_while_away:
            before = _fetch_count(emulator, backend, chat)
            emulator.say(chat, during_reload)
            sent_while_away.append(during_reload)
            wait_for(lambda: _agent_message_fetched(emulator, backend, chat, before),
                     what="the connector to take the agent's message")
        route.continue_()

    user.route("**/rasa-webchat.js", hold_script_until_the_agent_wrote)
    user.reload()
    assert sent_while_away, "the reloaded page did not load the widget's script"
    # The same session after the reload, and the message shown exactly once: not lost, not replayed twice.
    bot_lines(during_reload).wait_for()
    assert json.loads(user.evaluate("localStorage.getItem('chat_session')"))["session_id"] == session
    agent_sends("Anything else?")
    bot_lines("Anything else?").wait_for()
    assert bot_lines(during_reload).count() == 1
    assert bot_lines("Hi, I'm Beth. How can I help?").count() == 1
    assert user.locator(".rw-client", has_text="My VPN stopped working").count() == 1
    # What the widget shows for a message it cannot read (String(undefined), an object).
    assert user.locator(".rw-response", has_text=re.compile(r"undefined|\[object Object\]")).count() == 0
    user.screenshot(path=str(output / "widget.png"))
    agent.screenshot(path=str(output / "agent-console.png"))

    agent.get_by_test_id("close").click()
    bot_lines(TEXTS.agent_closed).wait_for()
    wait_for(lambda: socketio_rasa.slots(session)["handoff_active"] is False, what="the handoff to end")

    greetings = bot_lines(GREETING).count()
    user_says("hi")
    bot_lines(GREETING).nth(greetings).wait_for()
    assert "hi" not in [m["message"] for m in emulator.transcript(chat)], "a message after the close went to the agent"
    # Works offline: the page asked nothing of any host but its own and Rasa's (the widget's web font is not loaded).
    assert offsite == []
    user_context.close()


def test_agent_markup_and_script_links_do_not_run_in_the_widget(browser, page_server: PageServer, socketio_rasa: RasaServer, emulator: Emulator):  # noqa: F811
    """An agent item (or a forged callback) with markup or a ``javascript:``
    URL is shown as text by the stock widget, and never runs."""
    if socketio_rasa.backend != "virtual_agent":
        pytest.skip("rich items arrive as Virtual Agent callbacks")
    import requests

    context = browser.new_context()
    context.route(OFFSITE, lambda route: route.abort())
    user = context.new_page()
    user.set_default_timeout(TIMEOUT_MS)
    dialogs = []
    user.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    user.goto(page_server.url)
    user.locator(".rw-response", has_text=GREETING).first.wait_for()
    session = json.loads(user.evaluate("localStorage.getItem('chat_session')"))["session_id"]
    user.locator(".rw-new-message").fill("talk to live agent")
    user.locator(".rw-new-message").press("Enter")
    user.locator(".rw-response", has_text=TEXTS.connecting).wait_for()
    chat = wait_for(lambda: socketio_rasa.slots(session).get("live_chat_id"), what="the handoff to start")

    agent = {"agentName": "Mallory", "sentFromAgent": True}
    items = [
        {"uiType": "OutputHtml", "value": "<b id='injected'>bold</b><img src=x onerror=\"alert('html')\">", "agentInfo": agent},
        # The widget renders text as Markdown, and keeps javascript: in a Markdown link.
        {"uiType": "OutputText", "value": "click [here](javascript:alert('markdown')) or ![pixel](https://example.com/p.png)", "agentInfo": agent},
        {"uiType": "OutputLink", "label": "evil link", "value": {"action": "javascript:alert('link')"}, "agentInfo": agent},
        {"uiType": "OutputImage", "label": "evil image", "value": "javascript:alert('image')", "agentInfo": agent},
        # The security review's reproduction (issue 22): newlines in the URL smuggle a
        # Markdown reference definition whose target is javascript:.
        {"uiType": "OutputLink", "value": {"action": SMUGGLED_LINK}, "agentInfo": agent},
        {"uiType": "OutputLink", "label": "Click", "value": {"action": SMUGGLED_LINK}, "agentInfo": agent},
        {"uiType": "OutputText", "value": "see below\n\n[y]: javascript:alert('reference')\n\n[Open][y]", "agentInfo": agent},
        {"uiType": "OutputLink", "label": "knowledge article", "value": {"action": "https://example.com/kb/1"}, "agentInfo": agent},
    ]
    pushed = requests.post(
        f"{socketio_rasa.url}/webhooks/{ROUTE}/callback",
        json={"clientSessionId": chat, "clientVariables": {"rasa_sender_id": session}, "agentChat": True, "body": items},
        headers={"X-Webhook-Secret": WEBHOOK_SECRET},
        timeout=10,
    )
    assert pushed.status_code == 200, pushed.text

    user.locator(".rw-response", has_text="knowledge article").wait_for()
    assert user.locator("#injected").count() == 0
    # Shown as the agent wrote it, not as a link or an image.
    user.locator(".rw-response", has_text="click [here](javascript:alert('markdown'))").wait_for()
    hrefs = user.locator(".rw-response a").evaluate_all("links => links.map(link => link.getAttribute('href'))")
    assert all(href.startswith("https://") for href in hrefs), hrefs
    user.locator(".rw-response", has_text="[Open][y]").wait_for()
    assert "https://example.com/kb/1" in hrefs
    # Clicking whatever the widget shows as a link runs nothing.
    for index in range(user.locator(".rw-response a").count()):
        user.locator(".rw-response a").nth(index).click(modifiers=["Control"])
    assert user.locator(".rw-response img").evaluate_all("images => images.map(image => image.getAttribute('src'))") == []
    assert dialogs == []
    user.locator(".rw-new-message").fill("/end_chat")
    user.locator(".rw-new-message").press("Enter")
    wait_for(lambda: socketio_rasa.slots(session)["handoff_active"] is False, what="the handoff to end")
    context.close()
