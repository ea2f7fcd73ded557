"""A full handoff as people see it, in headless Chromium: the user's chat page
(served by the channel) and the agent console (served by the emulator).

Needs Debian's ``chromium``. Without it the test is skipped with a reason,
unless ``REQUIRE_BROWSER_TEST=1`` (set by ``.ci/run``) makes that a failure.
Screenshots of both pages go to ``test-output/browser/<backend>/``."""

import os
import shutil
import struct
import zlib
from pathlib import Path
from typing import Callable, Optional, Tuple

import pytest

from tests.e2e.conftest import TEXTS, Handoff
from tests.e2e.harness import FileServer

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# The flags the machine's Chromium needs: no sandbox as root, and no calls home
# on a network that refuses them.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000


def png(width: int, height: int, rgb: tuple) -> bytes:
    """A solid-colour PNG, large enough to see in a screenshot."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


# Module scope, not session: while Playwright's sync API is open, its event loop
# counts as running in this thread, and every async test after it would fail
# with "Cannot run the event loop while another loop is running".
@pytest.fixture(scope="module")
def browser():
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


def user_and_agent_pages(browser, locale: Optional[str] = None):
    """The user's chat page and the agent's console, each in its own browser context."""
    user_options = {"locale": locale} if locale else {}
    user = browser.new_context(viewport={"width": 520, "height": 760}, **user_options).new_page()
    agent = browser.new_context(viewport={"width": 1180, "height": 760}).new_page()
    for page in (user, agent):
        page.set_default_timeout(TIMEOUT_MS)
    return user, agent


def chat_page_actions(user) -> Tuple[Callable[[str], None], Callable[[str, str], None]]:
    """``says(text)`` types and sends on the chat page; ``sees(author, text)``
    waits until a message of that author with that text is shown."""

    def says(text: str) -> None:
        user.get_by_test_id("message-input").fill(text)
        user.get_by_test_id("send").click()

    def sees(author: str, text: str) -> None:
        user.locator(f'[data-testid="message"][data-author="{author}"]', has_text=text).last.wait_for()

    return says, sees


def test_a_full_handoff_in_the_browser(browser, handoff: Handoff):
    output = ROOT / "test-output" / "browser" / handoff.backend
    output.mkdir(parents=True, exist_ok=True)
    user, agent = user_and_agent_pages(browser)
    user_says, user_sees = chat_page_actions(user)

    user.goto(f"{handoff.rasa.url}/webhooks/servicenow/chat")
    # A new conversation starts with the bot's greeting, as rasa-webchat's initPayload does.
    user_sees("bot", "Hello! I'm the virtual assistant")
    assert user.locator('[data-testid="message"][data-author="user"]').count() == 0
    # Another browser, open all along: it has its own conversation and must see none of this one.
    stranger = browser.new_context().new_page()
    stranger.goto(f"{handoff.rasa.url}/webhooks/servicenow/chat")
    user_says("hi")
    user.locator('[data-testid="message"][data-author="bot"]', has_text="Hello! I'm the virtual assistant").nth(1).wait_for()

    user_says("talk to live agent")
    user_sees("bot", TEXTS.connecting)
    user.get_by_test_id("live-marker").wait_for(state="visible")
    sender = user.evaluate("sessionStorage.getItem('servicenow-webchat-sender')")
    chat = handoff.rasa.slots(sender)["live_chat_id"]

    agent.goto(f"{handoff.emulator.url}/__emu/console")
    agent.locator(f'[data-testid="chat-item"][data-session="{chat}"]').click()
    agent.get_by_test_id("accept").click()
    agent.locator(f'[data-testid="chat-item"][data-session="{chat}"][data-state="live"]').wait_for()
    agent.get_by_test_id("reply-input").fill("Hi, I'm Beth. How can I help?")
    agent.get_by_test_id("send").click()

    # The reply appears in the user's page on its own: no reload, no user message.
    user_sees("agent", "Hi, I'm Beth. How can I help?")
    user.get_by_test_id("live-agent").filter(has_text="Beth Anglin").wait_for()

    user_says("My VPN stopped working this morning.")
    agent.locator('[data-testid="message"][data-author="user"]', has_text="My VPN stopped working").wait_for()
    # The same conversation in another browser, by ?sender= (as make run-replicas shows it on
    # the other replica): no greeting of its own, which would reach the agent; the agent's next message shows.
    same = browser.new_context().new_page()
    same.set_default_timeout(TIMEOUT_MS)
    same.goto(f"{handoff.rasa.url}/webhooks/servicenow/chat?sender={sender}")
    agent.get_by_test_id("reply-input").fill("Let me reset your VPN profile, one moment.")
    agent.get_by_test_id("send").click()
    user_sees("agent", "Let me reset your VPN profile")
    same.locator('[data-testid="message"][data-author="agent"]', has_text="Let me reset your VPN profile").wait_for()
    assert same.locator('[data-testid="message"][data-author="bot"]').count() == 0
    assert "/greet" not in [message["message"] for message in handoff.emulator.transcript(chat)]
    same.context.close()

    # The agent sends an image from the console; the user's page shows it, loaded.
    agent.get_by_test_id("attach").set_input_files(
        {"name": "vpn-settings.png", "mimeType": "image/png", "buffer": png(240, 120, (46, 125, 196))}
    )
    image = user.locator('[data-testid="message"][data-author="agent"] img').last
    image.wait_for()
    user.wait_for_function("image => image.complete && image.naturalWidth === 240", arg=image.element_handle())

    # The user sends a file by URL (the frontend's own storage); the agent sees it.
    files = FileServer({"/vpn-error.png": png(160, 80, (196, 60, 46))})
    try:
        user.once("dialog", lambda dialog: dialog.accept(f"{files.url}/vpn-error.png"))
        user.get_by_test_id("attach").click()
        agent.locator(
            '[data-testid="message"][data-author="user"] [data-testid="attachment"]', has_text="vpn-error.png"
        ).wait_for()
    finally:
        files.stop()
    user.screenshot(path=str(output / "chat-page.png"))
    agent.screenshot(path=str(output / "agent-console.png"))

    agent.get_by_test_id("close").click()
    user_sees("bot", TEXTS.agent_closed)
    user.get_by_test_id("live-marker").wait_for(state="hidden")

    user_says("hi")
    user.locator('[data-testid="message"][data-author="bot"]', has_text="Hello! I'm the virtual assistant").nth(2).wait_for()
    assert handoff.rasa.slots(sender)["handoff_active"] is False

    assert stranger.evaluate("sessionStorage.getItem('servicenow-webchat-sender')") != sender
    # Its own greeting, nothing of the other conversation.
    assert stranger.locator('[data-testid="message"]').count() == 1
    assert stranger.locator('[data-testid="message"][data-author="bot"]', has_text="Hello! I'm the virtual assistant").count() == 1


def test_a_german_conversation_in_the_browser(browser, handoff: Handoff):
    """The demo's language button: the bot and the channel's handoff notices
    (domain responses ``utter_servicenow_*``) answer in German."""
    if handoff.backend != "connect":
        pytest.skip("the language comes from the domain, the same for both APIs: one run shows it")
    output = ROOT / "test-output" / "browser" / "de"
    output.mkdir(parents=True, exist_ok=True)
    user, agent = user_and_agent_pages(browser, locale="de-DE")
    user_says, user_sees = chat_page_actions(user)

    user.goto(f"{handoff.rasa.url}/webhooks/servicenow/chat")
    user_sees("bot", "Hello! I'm the virtual assistant")  # the greeting the page asks for
    user.get_by_role("button", name="Deutsch").click()  # the greeting's button: /speak_german
    user_sees("bot", "Alles klar, ich antworte auf Deutsch.")

    user_says("Mitarbeiter")
    user_sees("bot", "Ich verbinde Sie mit einem Mitarbeiter.")
    user.get_by_test_id("live-marker").wait_for(state="visible")
    sender = user.evaluate("sessionStorage.getItem('servicenow-webchat-sender')")
    chat = handoff.rasa.slots(sender)["live_chat_id"]

    agent.goto(f"{handoff.emulator.url}/__emu/console")
    agent.locator(f'[data-testid="chat-item"][data-session="{chat}"]').click()
    agent.get_by_test_id("accept").click()
    agent.locator(f'[data-testid="chat-item"][data-session="{chat}"][data-state="live"]').wait_for()
    agent.get_by_test_id("reply-input").fill("Guten Tag, hier ist Beth. Wie kann ich helfen?")
    agent.get_by_test_id("send").click()
    user_sees("agent", "Guten Tag, hier ist Beth.")
    user_says("Mein VPN funktioniert seit heute Morgen nicht mehr.")
    agent.locator('[data-testid="message"][data-author="user"]', has_text="Mein VPN funktioniert").wait_for()

    agent.get_by_test_id("close").click()
    user_sees("bot", "Der Mitarbeiter hat den Chat beendet.")
    user.get_by_test_id("live-marker").wait_for(state="hidden")
    user_says("hallo")
    user_sees("bot", "Hallo! Ich bin der virtuelle Assistent.")
    user.screenshot(path=str(output / "chat-page.png"))
    assert handoff.rasa.slots(sender)["language"] == "de"


def test_agent_content_is_shown_as_text_and_only_http_links_are_followed(browser, handoff: Handoff):
    """An agent item (or a forged callback) with markup or a ``javascript:``
    URL must not run in the user's page."""
    if handoff.backend != "virtual_agent":
        pytest.skip("rich items arrive as Virtual Agent callbacks")
    import requests

    from tests.e2e.conftest import WEBHOOK_SECRET

    user = browser.new_context().new_page()
    user.set_default_timeout(TIMEOUT_MS)
    dialogs = []
    user.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    user.goto(f"{handoff.rasa.url}/webhooks/servicenow/chat")
    user.get_by_test_id("message-input").fill("talk to live agent")
    user.get_by_test_id("send").click()
    user.get_by_test_id("live-marker").wait_for(state="visible")
    sender = user.evaluate("sessionStorage.getItem('servicenow-webchat-sender')")
    chat = handoff.rasa.slots(sender)["live_chat_id"]

    agent = {"agentName": "Mallory", "sentFromAgent": True}
    items = [
        {"uiType": "OutputHtml", "value": "<b id='injected'>bold</b><img src=x onerror=\"alert('html')\">", "agentInfo": agent},
        {"uiType": "OutputLink", "label": "evil link", "value": {"action": "javascript:alert('link')"}, "agentInfo": agent},
        {"uiType": "OutputImage", "label": "evil image", "value": "javascript:alert('image')", "agentInfo": agent},
        {"uiType": "OutputLink", "label": "knowledge article", "value": {"action": "https://example.com/kb/1"}, "agentInfo": agent},
    ]
    pushed = requests.post(
        f"{handoff.rasa.url}/webhooks/servicenow/callback",
        json={"clientSessionId": chat, "clientVariables": {"rasa_sender_id": sender}, "agentChat": True, "body": items},
        headers={"X-Webhook-Secret": WEBHOOK_SECRET},
        timeout=10,
    )
    assert pushed.status_code == 200, pushed.text

    user.locator('[data-testid="message"][data-author="agent"]', has_text="knowledge article").wait_for()
    assert user.locator("#injected").count() == 0
    assert user.locator('[data-testid="message"] img').count() == 0
    hrefs = user.locator('[data-testid="message"] a').evaluate_all("links => links.map(link => link.href)")
    assert hrefs == ["https://example.com/kb/1"]
    assert user.locator('[data-testid="message"][data-author="agent"]', has_text="evil link").count() == 1
    assert dialogs == []
    user.get_by_test_id("end-chat").click()
    user.get_by_test_id("live-marker").wait_for(state="hidden")
