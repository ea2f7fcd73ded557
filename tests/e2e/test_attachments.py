"""Files both ways, on both APIs, with a real ``rasa run`` and the emulator:
the user's file reaches the agent (Virtual Agent: ``message.attachment``;
Connect: the Attachment API and the message's ``attachments``), a refused
type or size is told to the user and nothing is sent, and an agent's image or
document reaches the user as Rasa's ``image`` / ``attachment`` field."""

import base64
from typing import Any, Dict, Iterator, List

import pytest
import requests

from connectors.servicenow.attachments import DEFAULT_MAX_ATTACHMENT_BYTES, human_size
from tests.e2e.conftest import TEXTS, Handoff
from tests.e2e.harness import FileServer, new_sender, wait_for

#: A 1x1 PNG: small, and a real image for the browser.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
#: One byte over the channel's default limit.
TOO_BIG = DEFAULT_MAX_ATTACHMENT_BYTES + 1


@pytest.fixture(scope="module")
def files() -> Iterator[FileServer]:
    server = FileServer({"/shot.png": PNG, "/big.pdf": b"%PDF" + b"0" * (TOO_BIG - 4)})
    yield server
    server.stop()


def send(handoff: Handoff, sender: str, attachment: Dict[str, Any], message: str = "") -> requests.Response:
    body: Dict[str, Any] = {"sender": sender, "attachment": attachment}
    if message:
        body["message"] = message
    return requests.post(f"{handoff.rasa.url}/webhooks/servicenow/webhook", json=body, timeout=30)


def user_entries(handoff: Handoff, sender: str, chat: str) -> List[Dict[str, Any]]:
    requester = handoff.requester(sender)
    return [m for m in handoff.emulator.transcript(chat) if m["created_by"] == requester]


def refusal(name: str) -> str:
    return TEXTS.attachment_refused.format(name=name, max_size=human_size(DEFAULT_MAX_ATTACHMENT_BYTES))


def test_the_users_file_reaches_the_agent(handoff: Handoff, files: FileServer):
    sender = new_sender()
    chat = handoff.start_live(sender)
    url = f"{files.url}/shot.png"
    answer = send(handoff, sender, {"url": url, "content_type": "image/png", "name": "shot.png"}, "Here is the error")
    assert answer.status_code == 200 and answer.json() == []

    entry = wait_for(lambda: next((m for m in user_entries(handoff, sender, chat) if m["attachments"]), None))
    assert entry["message"] == "Here is the error"
    (attached,) = entry["attachments"]
    if handoff.backend == "connect":
        # Uploaded to ServiceNow: the agent's copy is ServiceNow's, byte for byte.
        assert attached["file_name"] == "shot.png" and attached["content_type"] == "image/png"
        assert requests.get(attached["download_link"], timeout=10).content == PNG
    else:
        # Virtual Agent fetches it from the URL itself.
        assert (attached["url"], attached["contentType"], attached["fileName"]) == (url, "image/png", "shot.png")


@pytest.mark.parametrize(
    "attachment, name",
    [
        ({"content_type": "application/x-msdownload", "name": "setup.exe", "path": "/shot.png"}, "setup.exe"),
        # Declared too large: refused without a request.
        ({"content_type": "application/pdf", "name": "scan.pdf", "path": "/shot.png", "size": TOO_BIG}, "scan.pdf"),
        # Not declared: the size is learnt from the file itself (HEAD or the capped download).
        ({"content_type": "application/pdf", "name": "big.pdf", "path": "/big.pdf"}, "big.pdf"),
        # Gone: nothing to pass on.
        ({"content_type": "image/png", "name": "gone.png", "path": "/gone.png"}, "gone.png"),
    ],
)
def test_a_refused_file_is_told_to_the_user_and_nothing_is_sent(handoff: Handoff, files: FileServer, attachment, name):
    sender = new_sender()
    chat = handoff.start_live(sender)
    before = user_entries(handoff, sender, chat)
    spec = {key: value for key, value in attachment.items() if key != "path"}
    spec["url"] = files.url + attachment["path"]
    answer = send(handoff, sender, spec, "see attached")
    assert answer.status_code == 200
    assert [reply["text"] for reply in answer.json()] == [refusal(name)]
    # The chat goes on: the next message gets through, the refused one never did.
    handoff.rasa.say(sender, "still there?")
    wait_for(lambda: [m["message"] for m in user_entries(handoff, sender, chat)][len(before):] == ["still there?"])
    assert not any(m["attachments"] for m in user_entries(handoff, sender, chat))
    assert handoff.rasa.slots(sender)["handoff_active"] is True


def test_the_agents_image_and_document_reach_the_user(handoff: Handoff):
    sender = new_sender()
    chat = handoff.start_live(sender)
    handoff.emulator.control(
        "agent/message",
        {"session": chat, "attachment": {"name": "diagram.png", "content_type": "image/png", "data_base64": base64.b64encode(PNG).decode()}},
    )
    handoff.emulator.control(
        "agent/message",
        {"session": chat, "attachment": {"name": "manual.pdf", "content_type": "application/pdf", "data_base64": base64.b64encode(b"%PDF-1.4").decode()}},
    )

    def delivered() -> List[Dict[str, Any]]:
        items = [i for i in handoff.callback.for_user(sender) if "image" in i or "attachment" in i]
        return items if len(items) == 2 else []

    image, document = wait_for(delivered, what="the agent's files")
    assert image["metadata"]["source"] == "agent" and image["text"] == "diagram.png"
    assert requests.get(image["image"], timeout=10).content == PNG
    assert document["text"] == "manual.pdf" and "image" not in document
    assert requests.get(document["attachment"], timeout=10).content == b"%PDF-1.4"

    # The tracker keeps them too (record_transcript), as bot events with Rasa's fields.
    def recorded() -> List[Dict[str, Any]]:
        events = handoff.rasa.tracker(sender)["events"]
        return [e["data"] for e in events if e["event"] == "bot" and (e.get("data") or {}).get("image") == image["image"]]

    wait_for(recorded, what="the agent's image in the tracker")


@pytest.mark.parametrize("text", ["hello", ""])
def test_outside_a_handoff_the_file_goes_to_the_bot_in_the_metadata(handoff: Handoff, files: FileServer, text):
    sender = new_sender()
    spec = {"url": f"{files.url}/shot.png", "content_type": "image/png", "name": "shot.png", "size": len(PNG)}
    fetched_before = len(files.requests)
    answer = send(handoff, sender, spec, text)
    assert answer.status_code == 200
    user_events = [e for e in handoff.rasa.tracker(sender)["events"] if e["event"] == "user"]
    assert user_events[-1]["text"] == text
    assert user_events[-1]["metadata"]["attachment"] == spec
    assert handoff.rasa.slots(sender)["handoff_active"] is not True
    # Nothing was fetched: the file is the bot's business.
    assert files.requests[fetched_before:] == []


@pytest.mark.parametrize(
    "attachment",
    [
        "https://example.com/a.png",
        {"url": "file:///etc/passwd", "content_type": "text/plain", "name": "passwd"},
        {"url": "https://example.com/a.png", "content_type": "png", "name": "a.png"},
        {"url": "https://example.com/a.png", "content_type": "image/png", "name": "../a.png"},
        {"url": "https://example.com/a.png", "content_type": "image/png", "name": "a.png", "size": -1},
    ],
)
def test_a_malformed_attachment_gets_400_and_changes_nothing(handoff: Handoff, attachment):
    sender = new_sender()
    answer = requests.post(
        f"{handoff.rasa.url}/webhooks/servicenow/webhook", json={"sender": sender, "attachment": attachment}, timeout=30
    )
    assert answer.status_code == 400
    assert answer.json()["reason"] == "InvalidAttachment"
    assert [e for e in handoff.rasa.tracker(sender)["events"] if e["event"] == "user"] == []
