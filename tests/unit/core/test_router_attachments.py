"""A file in a turn, with the demo model loaded in process and ServiceNow mocked: outside a handoff the bot gets it
in the metadata; a handoff that a file alone opens names the request after the file; during a handoff it goes to
the agent or is refused with the user told."""

import json

import aiohttp
from aioresponses import aioresponses

from connectors.servicenow.attachments import UserAttachment
from connectors.servicenow.payloads import UserPayload
from connectors.servicenow.rasa_glue.output import HANDOFF_PAYLOAD_KEY
from tests.unit.support import GROUP, SESSIONS, TEXTS, slots, start

FILE = UserAttachment("https://files.example.com/shot.png", "image/png", "shot.png", size=10)


async def test_a_file_alone_that_opens_a_handoff_names_the_request(channel):
    seen = []

    async def bot_hands_off(message):
        seen.append((message.text, message.metadata))
        await message.output_channel.send_custom_json(message.sender_id, {HANDOFF_PAYLOAD_KEY: {}})

    with aioresponses() as mock:
        mock.post(SESSIONS, payload={"result": {"group": GROUP, "state": 1}})
        replies = await channel.handle(UserPayload(sender="u1", message="", attachment=FILE), bot_hands_off)
        body = json.loads(mock.requests[("POST", aiohttp.client.URL(SESSIONS))][0].kwargs["data"])
    assert [reply["text"] for reply in replies] == [TEXTS.connecting]
    assert body == {"message": "shot.png"}
    assert seen == [("", {"attachment": FILE.wire()})]


async def test_during_a_handoff_a_refused_file_is_told_and_nothing_is_sent(channel, rasa_turn, agent):
    with aioresponses() as mock:
        await start(channel, rasa_turn, mock)
        calls_before = sum(len(calls) for calls in mock.requests.values())
        exe = UserAttachment("https://files.example.com/setup.exe", "application/x-msdownload", "setup.exe")
        replies = await channel.handle(UserPayload(sender="u1", message="run this", attachment=exe), rasa_turn)
        assert sum(len(calls) for calls in mock.requests.values()) == calls_before
    assert [reply["text"] for reply in replies] == [TEXTS.attachment_refused.format(name="setup.exe", max_size="10 MB")]
    assert (await slots(agent))["handoff_active"] is True
    rasa_turn.assert_awaited_once()  # the opening turn only: the file never reached NLU
