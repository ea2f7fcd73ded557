"""Authentication on /api/** and the strict header checks (reference 5.2, 4.1)."""

from __future__ import annotations

import aiohttp

from connectors.servicenow.emulator import DEFAULT_QUEUE_SYS_ID

from .conftest import BASIC, CONNECT

NOT_AUTHENTICATED = {
    "error": {"message": "User Not Authenticated", "detail": "Required to provide Auth information"},
    "status": "failure",
}


async def test_missing_credentials_get_the_401_envelope(client):
    reply = await client.api("GET", "/support/queues", auth=None)
    assert (reply.status, reply.body) == (401, NOT_AUTHENTICATED)


async def test_wrong_password_unknown_bearer_and_garbage_are_401(client):
    assert (await client.api("GET", "/support/queues", auth=aiohttp.BasicAuth("rasa.integration", "x"))).status == 401
    assert (await client.api("GET", "/support/queues", bearer="not-a-token")).status == 401
    garbage = {"Accept": "application/json", "Authorization": "Basic %%%"}
    assert (await client.request("GET", CONNECT + "/support/queues", headers=garbage)).status == 401


async def test_basic_auth_is_accepted(client):
    reply = await client.api("GET", "/support/queues")
    assert reply.status == 200
    assert reply.result[0]["sys_id"] == DEFAULT_QUEUE_SYS_ID


async def test_missing_or_wildcard_accept_header_is_400(client):
    reply = await client.request(
        "GET", CONNECT + "/support/queues", auth=BASIC, skip_auto_headers=["Accept"]
    )
    assert reply.status == 400
    assert reply.body["status"] == "failure"
    reply = await client.request("GET", CONNECT + "/support/queues", auth=BASIC, headers={"Accept": "*/*"})
    assert reply.status == 400


async def test_accept_header_may_list_json_among_others(client):
    headers = {"Accept": "text/html, application/json; charset=utf-8"}
    assert (await client.request("GET", CONNECT + "/support/queues", auth=BASIC, headers=headers)).status == 200


async def test_post_without_json_content_type_is_400(client):
    reply = await client.request(
        "POST",
        f"{CONNECT}/support/queues/{DEFAULT_QUEUE_SYS_ID}/sessions",
        auth=BASIC,
        data=b'{"message": "hi"}',
        headers={"Accept": "application/json", "Content-Type": "text/plain"},
    )
    assert reply.status == 400
    assert (await client.ok("GET", "sessions"))["sessions"] == []


async def test_strict_headers_can_be_switched_off(client):
    await client.ok("POST", "config", {"strict_headers": False})
    reply = await client.request(
        "POST",
        f"{CONNECT}/support/queues/{DEFAULT_QUEUE_SYS_ID}/sessions",
        auth=BASIC,
        data=b'{"message": "hi"}',
        skip_auto_headers=["Accept", "Content-Type"],
    )
    assert reply.status == 200


async def test_invalid_json_body_is_400(client):
    reply = await client.request(
        "POST",
        f"{CONNECT}/support/queues/{DEFAULT_QUEUE_SYS_ID}/sessions",
        auth=BASIC,
        data=b"{not json",
        headers={"Accept": "application/json", "Content-Type": "application/json"},
    )
    assert reply.status == 400
    assert reply.body["error"]["message"] == "Exception while reading request"


async def test_unknown_api_route_is_400_and_wrong_method_is_405(client):
    reply = await client.request("GET", "/api/now/table/incident", auth=BASIC, headers={"Accept": "application/json"})
    assert reply.status == 400
    assert reply.body["error"]["message"] == "Requested URI does not represent any resource"
    reply = await client.api("DELETE", "/support/queues")
    assert reply.status == 405


async def test_control_plane_needs_no_credentials(client):
    reply = await client.control("GET", "sessions")
    assert (reply.status, reply.body) == (200, {"sessions": []})
