"""Signed callbacks (issue 20): every POST of a real ``rasa run`` to
``callback_url`` carries a Standard Webhooks signature that the receiver
code of docs/http-api.md verifies, in Python and in JavaScript, and a
delivery id that a retry keeps."""

import base64
import hashlib
import hmac
import json
import shutil
import subprocess
import time

import pytest
import requests

from tests.e2e.conftest import CALLBACK_SECRET
from tests.e2e.harness import docs_snippet, new_sender, verify_callback, wait_for


def ids_of(callback, sender):
    return [
        headers["webhook-id"] for headers, raw in list(callback.verified)
        if json.loads(raw).get("recipient_id") == sender
    ]


def test_every_post_verifies_and_a_forgery_does_not(handoff):
    sender = new_sender()
    chat = handoff.start_live(sender)
    handoff.emulator.say(chat, "signed hello")
    handoff.callback.wait_for_text(sender, lambda text: text == "signed hello")
    handoff.rasa.say(sender, "/end_chat")
    assert handoff.callback.refused == []
    ids = ids_of(handoff.callback, sender)
    assert len(ids) == len(set(ids)) >= 2  # one id per item
    headers, raw = next((h, r) for h, r in handoff.callback.verified if b"signed hello" in r)
    assert verify_callback(CALLBACK_SECRET, headers, raw)
    # What an attacker who found the URL could send: another body under the
    # same headers, a replayed old signature, or no signature at all.
    forged = raw.replace(b"signed hello", b"click evil.example")
    assert not verify_callback(CALLBACK_SECRET, headers, forged)
    stale = {**headers, "webhook-timestamp": str(int(time.time()) - 3600)}
    assert not verify_callback(CALLBACK_SECRET, stale, raw)
    answer = requests.post(handoff.callback.url, data=forged, headers={"Content-Type": "application/json"}, timeout=10)
    assert answer.status_code == 401 and handoff.callback.refused
    handoff.callback.refused.clear()


@pytest.mark.parametrize("backend", ["virtual_agent"], indirect=True)
def test_a_retried_post_keeps_its_delivery_id(handoff):
    sender = new_sender()
    chat = handoff.start_live(sender)
    def attempts():
        return [headers["webhook-id"] for headers, raw in list(handoff.callback.verified) if b"retried hello" in raw]

    handoff.callback.refuse.add(sender)  # the frontend answers 500 for a while
    try:
        handoff.emulator.say(chat, "retried hello")
        wait_for(lambda: len(attempts()) >= 2, what="the refused item's retry")
    finally:
        handoff.callback.refuse.discard(sender)
    handoff.callback.wait_for_text(sender, lambda text: text == "retried hello")
    assert len(attempts()) >= 3 and len(set(attempts())) == 1, attempts()
    handoff.rasa.say(sender, "/end_chat")


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed (runs the JavaScript example of docs/http-api.md)")
def test_the_javascript_example_verifies_a_real_post_and_refuses_a_changed_one(handoff):
    sender = new_sender()
    chat = handoff.start_live(sender)
    handoff.emulator.say(chat, "node hello")
    handoff.callback.wait_for_text(sender, lambda text: text == "node hello")
    headers, raw = next((h, r) for h, r in handoff.callback.verified if b"node hello" in r)
    lowered = {name.lower(): value for name, value in headers.items()}
    script = docs_snippet("verify-callback-javascript") + """
const [secret, headers, body] = JSON.parse(require("fs").readFileSync(0, "utf8"));
const raw = Buffer.from(body, "base64");
const changed = Buffer.from(raw.toString().replace("node hello", "node hellO"));
console.log(JSON.stringify([verifyCallback(secret, headers, raw), verifyCallback(secret, headers, changed)]));
"""
    stdin = json.dumps([CALLBACK_SECRET, lowered, base64.b64encode(raw).decode()])
    result = subprocess.run(["node", "-e", script], input=stdin, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [True, False]
    handoff.rasa.say(sender, "/end_chat")


def test_the_python_example_matches_the_standard_webhooks_vector():
    # The published test vector of the standard, moved to now (the example refuses old timestamps).
    secret, webhook_id, body = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", b'{"test": 2432232314}'
    timestamp = str(int(time.time()))
    key = base64.b64decode(secret[len("whsec_"):])
    digest = base64.b64encode(hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest())
    headers = {"webhook-id": webhook_id, "webhook-timestamp": timestamp, "webhook-signature": "v1," + digest.decode()}
    assert verify_callback(secret, headers, body)
    assert not verify_callback(secret, {**headers, "webhook-id": "msg_other"}, body)
