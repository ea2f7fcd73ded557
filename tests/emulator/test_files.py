"""Attachments in the emulator: the Attachment API (upload, checks, download), Connect messages that carry uploaded
files, the VA ``message.attachment`` checks (malformed: 400; a type the instance does not take: dropped without a
word), and files an agent sends from the control plane on both APIs."""

from __future__ import annotations

import base64

from .conftest import BASIC

UPLOAD = "/api/now/attachment/file"


async def upload(client, group, data=b"PNGDATA", content_type="image/png", name="shot.png", auth=BASIC):
    query = f"?table_name=live_group_profile&table_sys_id={group}&file_name={name}" if group else ""
    headers = {"Accept": "application/json", "Content-Type": content_type}
    return await client.request("POST", UPLOAD + query, data=data, auth=auth, headers=headers)


async def test_an_upload_is_stored_served_and_attached_to_a_connect_message(client, live):
    group = live["group"]
    reply = await upload(client, group)
    assert reply.status == 201
    record = reply.body["result"]
    assert (record["file_name"], record["content_type"], record["size_bytes"]) == ("shot.png", "image/png", "7")
    assert (record["table_name"], record["table_sys_id"]) == ("live_group_profile", group)

    async with client.http.get(record["download_link"]) as response:
        assert (response.status, response.content_type, await response.read()) == (200, "image/png", b"PNGDATA")

    posted = await client.api("POST", f"/conversations/{group}/messages", {"message": "shot.png", "attachments": [record["sys_id"]]})
    assert posted.result["attachments"] == [record]
    assert (await client.messages(group))[0]["attachments"] == [record]


async def test_uploads_the_instance_refuses(client, live):
    group = live["group"]
    assert (await upload(client, group, content_type="application/x-msdownload", name="a.exe")).status == 400
    await client.ok("POST", "config", {"max_attachment_bytes": 4})
    assert (await upload(client, group)).status == 400
    assert (await upload(client, None)).status == 400  # no table, record or file name
    assert (await upload(client, "0" * 32)).status == 404
    assert (await upload(client, group, auth=None)).status == 401
    unknown = await client.api("POST", f"/conversations/{group}/messages", {"message": "x", "attachments": ["f" * 32]})
    assert unknown.status == 400


async def test_an_agent_file_from_the_control_plane_on_connect(client, live):
    group = live["group"]
    data = base64.b64encode(b"%PDF").decode()
    reply = await client.ok(
        "POST", "agent/message", {"session": group, "attachment": {"name": "m.pdf", "content_type": "application/pdf", "data_base64": data}}
    )
    (message,) = reply["messages"]
    assert message["created_by"] == "beth.anglin" and message["message"] == "m.pdf"
    (record,) = message["attachments"]
    async with client.http.get(record["download_link"]) as response:
        assert await response.read() == b"%PDF"
    bad = await client.control("POST", "agent/message", {"session": group, "attachment": {"name": "x", "content_type": "image/png", "data_base64": "!!"}})
    assert bad.status == 400


async def test_va_attachment_shape_is_checked_and_unaccepted_types_are_dropped_silently(va):
    await va.live()
    good = {"url": "https://files.example.com/a.png", "contentType": "image/png", "fileName": "a.png"}
    await va.send(None, message={"text": "", "typed": True, "attachment": good})
    exe = {"url": "https://files.example.com/a.exe", "contentType": "application/x-msdownload", "fileName": "a.exe"}
    await va.send(None, message={"text": "", "typed": True, "attachment": exe})
    for bad in ({"url": "ftp://x/a.png", "contentType": "image/png", "fileName": "a.png"}, {"url": "https://x/a.png"}, []):
        reply = await va.post(va.body(None, message={"text": "", "typed": True, "attachment": bad}))
        assert reply.status == 400, bad

    transcript = await va.transcript()
    user_messages = [m for m in transcript["messages"] if m["created_by"] == "abel.tuter"]
    assert [m["attachments"] for m in user_messages if m["attachments"]] == [[good]]
    assert [e["fileName"] for e in transcript["events"] if e["action"] == "ATTACHMENT_DROPPED"] == ["a.exe"]


async def test_an_agent_file_from_the_control_plane_on_va(va, client, receiver):
    await va.live()
    before = len(receiver.received)
    png = base64.b64encode(b"IMG").decode()
    await client.ok(
        "POST", "agent/message", {"session": "chat-1", "attachment": {"name": "d.png", "content_type": "image/png", "data_base64": png}}
    )
    await client.ok(
        "POST",
        "agent/message",
        {"session": "chat-1", "text": "the manual", "attachment": {"name": "m.pdf", "content_type": "application/pdf", "url": "https://docs.example.com/m.pdf"}},
    )
    received = await receiver.wait_for(before + 3)
    image, text, link = (r.body["body"][0] for r in received[before:])
    assert (image["uiType"], image["altText"]) == ("OutputImage", "d.png")
    assert image["agentInfo"]["agentName"] == "Beth Anglin"
    async with client.http.get(image["value"]) as response:
        assert await response.read() == b"IMG"
    assert (text["uiType"], text["value"]) == ("OutputText", "the manual")
    assert (link["uiType"], link["label"], link["value"]) == ("OutputLink", "m.pdf", {"action": "https://docs.example.com/m.pdf"})
