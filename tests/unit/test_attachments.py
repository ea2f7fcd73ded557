"""Attachments: the webhook's ``attachment`` shape, the policy, the options,
and the requests both backends make for a user's file (aioresponses), and how
agent files become Rasa message fields."""

import json
import re

import aiohttp
import pytest
from aioresponses import aioresponses

from connectors.servicenow.attachments import (
    AttachmentPolicy,
    AttachmentRefused,
    UserAttachment,
    human_size,
    refusal_placeholders,
)
from connectors.servicenow.servicenow.base import AgentMessage
from connectors.servicenow.servicenow.connect import ConnectBackend
from connectors.servicenow.servicenow.http import ServiceNowHTTP
from connectors.servicenow.servicenow.virtual_agent import VirtualAgentBackend
from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.errors import ConfigurationError
from connectors.servicenow.payloads import PayloadError, parse_user_payload
from connectors.servicenow.core.chat import LiveChat
from connectors.servicenow.rasa_glue.nlg import fill
from connectors.servicenow.texts import UserTexts

BASE = "https://acme.service-now.com"
GROUP = "g" * 32
FILE_URL = "https://files.example.com/shot.png"
PNG = UserAttachment(url=FILE_URL, content_type="image/png", name="shot.png")


def payload(**fields):
    return parse_user_payload(json.dumps({"sender": "u1", **fields}).encode(), max_message_length=100)


# -- the webhook body ---------------------------------------------------------


def test_an_attachment_alone_is_a_message():
    parsed = payload(attachment={"url": FILE_URL, "content_type": "image/png", "name": "shot.png", "size": 12})
    assert parsed.message == ""
    assert parsed.attachment == UserAttachment(FILE_URL, "image/png", "shot.png", 12)


def test_an_attachment_with_text_keeps_both():
    parsed = payload(message=" look ", attachment={"url": FILE_URL, "content_type": "image/png; q=1", "name": "a b.png"})
    assert (parsed.message, parsed.attachment.content_type, parsed.attachment.name) == ("look", "image/png; q=1", "a b.png")


def test_a_blank_text_beside_an_attachment_is_no_text():
    parsed = payload(message=" \n", attachment={"url": FILE_URL, "content_type": "image/png", "name": "shot.png"})
    assert parsed.message == ""
    with pytest.raises(PayloadError):
        payload(message=7, attachment={"url": FILE_URL, "content_type": "image/png", "name": "shot.png"})


def test_neither_text_nor_attachment_is_refused():
    with pytest.raises(PayloadError) as caught:
        payload(message="")
    assert caught.value.reason == "InvalidMessage"


@pytest.mark.parametrize(
    "attachment",
    [
        "https://example.com/a.png",
        [],
        {"content_type": "image/png", "name": "a.png"},
        {"url": "ftp://example.com/a.png", "content_type": "image/png", "name": "a.png"},
        {"url": "https://user:pw@example.com/a.png", "content_type": "image/png", "name": "a.png"},
        {"url": "https://example.com:99999/a.png", "content_type": "image/png", "name": "a.png"},
        {"url": "https://[::1/a.png", "content_type": "image/png", "name": "a.png"},
        {"url": "/relative.png", "content_type": "image/png", "name": "a.png"},
        {"url": "https://example.com/a b.png", "content_type": "image/png", "name": "a.png"},
        {"url": "https://example.com/" + "a" * 2048, "content_type": "image/png", "name": "a.png"},
        {"url": "https://example.com/a.png", "content_type": "png", "name": "a.png"},
        {"url": "https://example.com/a.png", "content_type": 7, "name": "a.png"},
        {"url": "https://example.com/a.png", "content_type": "image/png", "name": ""},
        {"url": "https://example.com/a.png", "content_type": "image/png", "name": "dir/a.png"},
        {"url": "https://example.com/a.png", "content_type": "image/png", "name": "dir\\a.png"},
        {"url": "https://example.com/a.png", "content_type": "image/png", "name": "a\n.png"},
        {"url": "https://example.com/a.png", "content_type": "image/png", "name": " a.png"},
        {"url": "https://example.com/a.png", "content_type": "image/png", "name": "a.png", "size": -1},
        {"url": "https://example.com/a.png", "content_type": "image/png", "name": "a.png", "size": True},
        {"url": "https://example.com/a.png", "content_type": "image/png", "name": "a.png", "size": "12"},
        {"url": "https://example.com/a.png", "content_type": "image/png", "name": "a.png", "extra": 1},
    ],
)
def test_a_malformed_attachment_is_a_400(attachment):
    with pytest.raises(PayloadError) as caught:
        payload(message="hi", attachment=attachment)
    assert (caught.value.status, caught.value.reason) == (400, "InvalidAttachment")


# -- options and texts --------------------------------------------------------


def settings(**options):
    return ServiceNowSettings.from_credentials(
        {"instance_url": BASE, "username": "rasa.integration", "password": "pw", "queue_id": "q1", **options}
    )


def test_the_options_shape_the_policy():
    policy = settings(attachment_types="image/*, application/pdf", max_attachment_bytes="2048", attachment_hosts=["*.example.com"]).attachment_policy
    assert policy.types == ("image/*", "application/pdf") and policy.max_bytes == 2048
    assert policy.type_allowed("IMAGE/PNG") and policy.type_allowed("application/pdf; charset=x")
    assert not policy.type_allowed("application/zip")
    assert policy.host_allowed("https://files.example.com/a") and not policy.host_allowed("http://127.0.0.1/a")


@pytest.mark.parametrize(
    "options", [{"attachment_types": ["png"]}, {"max_attachment_bytes": 0}, {"attachment_hosts": ["http://x"]}]
)
def test_bad_attachment_options_are_configuration_errors(options):
    with pytest.raises(ConfigurationError):
        settings(**options)


def test_the_refusal_text_fills_its_placeholders_and_keeps_unknown_ones():
    texts = UserTexts.from_options({"attachment_refused": "{name} / {max_size} / {other}"})
    assert fill(texts.attachment_refused, refusal_placeholders(PNG, settings())) == "shot.png / 10 MB / {other}"
    assert human_size(1536) == "1.5 KB" and human_size(10) == "10 bytes"


async def test_a_declared_size_over_the_limit_is_refused_without_a_request():
    policy = AttachmentPolicy(max_bytes=10)
    async with aiohttp.ClientSession() as session:
        with aioresponses():  # any request would fail: none is registered
            with pytest.raises(AttachmentRefused):
                await policy.check_size(UserAttachment(FILE_URL, "image/png", "a.png", size=11), session)


async def test_the_size_comes_from_head_when_not_declared():
    policy = AttachmentPolicy(max_bytes=10)
    async with aiohttp.ClientSession() as session:
        with aioresponses() as mock:
            mock.head(FILE_URL, headers={"Content-Length": "10"})
            assert await policy.check_size(PNG, session) == 10
            mock.head(FILE_URL, headers={"Content-Length": "11"})
            with pytest.raises(AttachmentRefused):
                await policy.check_size(PNG, session)
            mock.head(FILE_URL, status=405)
            with pytest.raises(AttachmentRefused, match="unknown"):
                await policy.check_size(PNG, session)


# -- the backends' requests ---------------------------------------------------


def chat():
    return LiveChat(sender_id="u1", chat_id=GROUP, user="rasa.integration")


async def test_virtual_agent_sends_message_attachment_in_the_api_shape():
    config = settings(api="virtual_agent", webhook_secret="s")
    http = ServiceNowHTTP(config)
    backend = VirtualAgentBackend(config, http)
    url = f"{BASE}/api/sn_va_as_service/bot/integration"
    try:
        with aioresponses() as mock:
            mock.head(FILE_URL, headers={"Content-Length": "68"})
            mock.post(url, payload={"status": "success"})
            await backend.send_attachment(chat().ref, "", PNG, config.attachment_policy)
            body = json.loads(mock.requests[("POST", aiohttp.client.URL(url))][0].kwargs["data"])
    finally:
        await http.aclose()
    message = body["message"]
    assert message["text"] == "" and message["typed"] is True
    attachment = message["attachment"]
    assert (attachment["url"], attachment["contentType"], attachment["fileName"]) == (FILE_URL, "image/png", "shot.png")
    assert attachment["clientAttachmentId"]


async def test_virtual_agent_sends_nothing_for_a_refused_type():
    config = settings(api="virtual_agent", webhook_secret="s")
    http = ServiceNowHTTP(config)
    try:
        with aioresponses() as mock:
            with pytest.raises(AttachmentRefused):
                await VirtualAgentBackend(config, http).send_attachment(
                    chat(), "x", UserAttachment(FILE_URL, "application/zip", "a.zip"), config.attachment_policy
                )
            assert not mock.requests
    finally:
        await http.aclose()


async def test_connect_uploads_the_file_then_posts_a_message_with_its_sys_id():
    config = settings()
    http = ServiceNowHTTP(config)
    upload = re.compile(rf"^{BASE}/api/now/attachment/file\?.*$")
    messages = f"{BASE}/api/now/connect/conversations/{GROUP}/messages"
    try:
        with aioresponses() as mock:
            mock.get(FILE_URL, body=b"PNGDATA")
            mock.post(upload, status=201, payload={"result": {"sys_id": "a" * 32, "file_name": "shot.png"}})
            mock.post(messages, payload={"result": {"sys_id": "m" * 32, "timestamp": 5}})
            sent = await ConnectBackend(config, http).send_attachment(chat().ref, "", PNG, config.attachment_policy)
            (upload_key,) = [key for key in mock.requests if key[0] == "POST" and "attachment" in str(key[1])]
            upload_call = mock.requests[upload_key][0]
            message_body = json.loads(mock.requests[("POST", aiohttp.client.URL(messages))][0].kwargs["data"])
    finally:
        await http.aclose()
    assert upload_key[1].query == {"table_name": "live_group_profile", "table_sys_id": GROUP, "file_name": "shot.png"}
    assert upload_call.kwargs["data"] == b"PNGDATA"
    assert upload_call.kwargs["headers"]["Content-Type"] == "image/png"
    assert message_body == {"message": "shot.png", "attachments": ["a" * 32]}
    assert sent.message_id == "m" * 32


async def test_connect_refuses_a_download_over_the_limit_and_uploads_nothing():
    config = settings(max_attachment_bytes=4)
    http = ServiceNowHTTP(config)
    try:
        with aioresponses() as mock:
            mock.get(FILE_URL, body=b"12345")
            with pytest.raises(AttachmentRefused):
                await ConnectBackend(config, http).send_attachment(chat().ref, "", PNG, config.attachment_policy)
            assert all(key[0] == "GET" for key in mock.requests)
    finally:
        await http.aclose()


# -- agent files to Rasa fields -----------------------------------------------


async def test_connect_agent_attachments_become_image_and_attachment_fields():
    config = settings()
    http = ServiceNowHTTP(config)
    backend = ConnectBackend(config, http)
    entry = {
        "sys_id": "b" * 32, "id": "b" * 32, "group": GROUP, "message": "see these", "created_by": "beth.anglin",
        "sender_name": "Beth Anglin", "timestamp": 10, "reflected_field": "comments",
        "attachments": [
            {"sys_id": "c" * 32, "file_name": "shot.png", "content_type": "image/png"},
            {"sys_id": "d" * 32, "file_name": "manual.pdf", "content_type": "application/pdf", "download_link": "https://x/y"},
        ],
    }
    try:
        events = backend._events(chat(), [entry])
    finally:
        await http.aclose()
    assert [(e.text, dict(e.rich)) for e in events if isinstance(e, AgentMessage)] == [
        ("see these", {}),
        ("shot.png", {"image": f"{BASE}/sys_attachment.do?sys_id={'c' * 32}"}),
        ("manual.pdf", {"attachment": "https://x/y"}),
    ]
    assert len({e.message_id for e in events}) == 3


def test_virtual_agent_output_image_and_link_become_image_and_attachment_fields():
    config = settings(api="virtual_agent", webhook_secret="s")
    backend = VirtualAgentBackend(config, ServiceNowHTTP(config))
    agent = {"sentFromAgent": True, "agentName": "Beth"}
    callback = backend.parse_callback(
        {
            "clientSessionId": GROUP, "agentChat": True,
            "body": [
                {"uiType": "OutputImage", "value": "https://i/x.png", "altText": "x.png", "agentInfo": agent, "messageId": "1"},
                {"uiType": "OutputLink", "label": "doc.pdf", "value": {"action": "https://i/doc.pdf"}, "agentInfo": agent, "messageId": "2"},
            ],
        }
    )
    assert [(e.text, dict(e.rich)) for e in callback.events] == [
        ("x.png", {"image": "https://i/x.png"}),
        ("doc.pdf", {"attachment": "https://i/doc.pdf"}),
    ]


async def test_with_a_host_list_redirects_are_not_followed():
    policy = AttachmentPolicy(max_bytes=10, hosts=("files.example.com",))
    async with aiohttp.ClientSession() as session:
        with aioresponses() as mock:
            mock.head(FILE_URL, status=302, headers={"Location": "http://169.254.169.254/latest"})
            mock.head("http://169.254.169.254/latest", headers={"Content-Length": "5"})
            with pytest.raises(AttachmentRefused, match="unknown"):
                await policy.check_size(PNG, session)
        with aioresponses() as mock:
            with pytest.raises(AttachmentRefused, match="host"):
                await policy.check_size(UserAttachment("http://10.0.0.1/a.png", "image/png", "a.png"), session)
            assert not mock.requests
