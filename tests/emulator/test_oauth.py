"""OAuth token endpoint (reference 2.6, 5.2) and Bearer access to /api."""

from __future__ import annotations

from connectors.servicenow.emulator import DEFAULT_CLIENT_ID, DEFAULT_QUEUE_SYS_ID, DEFAULT_USER

NOT_AUTHENTICATED = {
    "error": {"message": "User Not Authenticated", "detail": "Required to provide Auth information"},
    "status": "failure",
}


async def test_password_grant_returns_servicenow_token_shape(client):
    body = await client.password_token()
    assert list(body) == ["scope", "token_type", "expires_in", "refresh_token", "access_token"]
    assert body["scope"] == "useraccount"
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 1799
    assert body["access_token"] != body["refresh_token"]


async def test_bearer_token_authenticates_as_the_token_user(client):
    token = (await client.password_token())["access_token"]
    create = f"/support/queues/{DEFAULT_QUEUE_SYS_ID}/sessions"
    entry = (await client.api("POST", create, {"message": "hi"}, bearer=token)).result
    messages = await client.messages(entry["group"], bearer=token)
    assert messages[0]["created_by"] == DEFAULT_USER


async def test_client_credentials_grant_acts_as_application_user_without_refresh_token(client):
    reply = await client.token(grant_type="client_credentials")
    assert reply.status == 200
    assert "refresh_token" not in reply.body
    token = reply.body["access_token"]
    create = f"/support/queues/{DEFAULT_QUEUE_SYS_ID}/sessions"
    entry = (await client.api("POST", create, {"message": "hi"}, bearer=token)).result
    assert (await client.messages(entry["group"], bearer=token))[0]["created_by"] == DEFAULT_USER


async def test_refresh_grant_issues_a_new_working_access_token(client):
    first = await client.password_token()
    reply = await client.token(grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert reply.status == 200
    assert reply.body["access_token"] != first["access_token"]
    assert reply.body["refresh_token"] == first["refresh_token"]
    assert (await client.api("GET", "/support/queues", bearer=reply.body["access_token"])).status == 200


async def test_bad_client_secret_is_access_denied(client):
    reply = await client.token(grant_type="client_credentials", client_secret="wrong")
    assert reply.status == 401
    assert reply.body["error"] == "access_denied"


async def test_bad_user_password_is_access_denied(client):
    reply = await client.token(grant_type="password", username=DEFAULT_USER, password="wrong")
    assert (reply.status, reply.body["error"]) == (401, "access_denied")


async def test_unknown_refresh_token_is_access_denied(client):
    reply = await client.token(grant_type="refresh_token", refresh_token="nope")
    assert (reply.status, reply.body["error"]) == (401, "access_denied")


async def test_grant_not_enabled_for_client_is_rejected(client):
    clients = {DEFAULT_CLIENT_ID: {"secret": "s", "grants": ["password"], "user": DEFAULT_USER}}
    await client.ok("POST", "config", {"oauth_clients": clients})
    reply = await client.token(grant_type="client_credentials", client_secret="s")
    assert (reply.status, reply.body["error"]) == (401, "access_denied")


async def test_unsupported_grant_and_missing_fields_are_400(client):
    reply = await client.token(grant_type="authorization_code")
    assert (reply.status, reply.body["error"]) == (400, "unsupported_grant_type")
    reply = await client.token(grant_type="password", username=DEFAULT_USER)
    assert (reply.status, reply.body["error"]) == (400, "invalid_request")


async def test_token_request_must_be_form_encoded(client):
    reply = await client.request("POST", "/oauth_token.do", json={"grant_type": "password"})
    assert (reply.status, reply.body["error"]) == (400, "invalid_request")


async def test_expire_hook_forces_401_then_refresh_recovers(client):
    tokens = await client.password_token()
    assert (await client.api("GET", "/support/queues", bearer=tokens["access_token"])).status == 200
    assert (await client.ok("POST", "oauth/expire", {"token": "*"}))["expired"] == 1
    reply = await client.api("GET", "/support/queues", bearer=tokens["access_token"])
    assert (reply.status, reply.body) == (401, NOT_AUTHENTICATED)
    refreshed = await client.token(grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert (await client.api("GET", "/support/queues", bearer=refreshed.body["access_token"])).status == 200


async def test_expire_hook_can_revoke_refresh_tokens_too(client):
    tokens = await client.password_token()
    await client.ok("POST", "oauth/expire", {"token": "*", "refresh_tokens": True})
    reply = await client.token(grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert reply.status == 401


async def test_token_expires_on_the_emulator_clock(client):
    token = (await client.password_token())["access_token"]
    await client.ok("POST", "clock", {"advance_ms": 1798 * 1000})
    assert (await client.api("GET", "/support/queues", bearer=token)).status == 200
    await client.ok("POST", "clock", {"advance_ms": 2 * 1000})
    assert (await client.api("GET", "/support/queues", bearer=token)).status == 401

