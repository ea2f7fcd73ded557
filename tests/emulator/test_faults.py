"""Fault injection (reference 5.5): status faults, 429 headers, delays, dropped connections, times, probability,
session matching, and the per-user-per-hour rate limit."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from connectors.servicenow.emulator import DEFAULT_USER
from connectors.servicenow.emulator.faults import RATE_LIMIT_RULE_SYS_ID

MESSAGES = "/messages$"


def rule(status=None, times=1, **extra):
    respond = {"status": status, **extra.pop("respond", {})}
    return {"match": {"api": "connect", **extra.pop("match", {})}, "respond": respond, "times": times, **extra}


async def test_status_fault_fires_the_given_number_of_times_then_stops(client, live):
    await client.ok("POST", "faults", rule(500, times=2, match={"method": "GET", "path_regex": MESSAGES}))
    statuses = [(await client.api("GET", f"/conversations/{live['group']}/messages")).status for _ in range(3)]
    assert statuses == [500, 500, 200]
    (listed,) = (await client.ok("GET", "faults"))["faults"]
    assert listed["fired"] == 2


async def test_builtin_error_bodies(client, live):
    await client.ok("POST", "faults", [rule(404), rule(503), rule(401)])
    not_found = await client.api("GET", "/support/queues")
    unavailable = await client.api("GET", "/support/queues")
    unauthorized = await client.api("GET", "/support/queues")
    assert not_found.status == 404 and not_found.body["error"]["message"] == "No Record found"
    assert unavailable.status == 503 and unavailable.body["status"] == "failure"
    assert unauthorized.status == 401 and unauthorized.body["error"]["message"] == "User Not Authenticated"


async def test_connect_403_fault_uses_the_result_shape(client, live):
    await client.ok("POST", "faults", rule(403, match={"method": "POST", "path_regex": MESSAGES}))
    reply = await client.api("POST", f"/conversations/{live['group']}/messages", {"message": "hi"})
    assert reply.status == 403 and list(reply.body) == ["result"]


async def test_429_carries_retry_after_and_rate_limit_headers(client, live):
    await client.ok("POST", "faults", rule(429, respond={"headers": {"Retry-After": "2"}}))
    reply = await client.api("GET", f"/conversations/{live['group']}/messages")
    now_s = (await client.ok("GET", "clock"))["now_ms"] // 1000
    assert reply.status == 429
    assert reply.headers["Retry-After"] == "2"
    assert reply.headers["X-RateLimit-Limit"] == "100"
    assert reply.headers["X-RateLimit-Rule"] == RATE_LIMIT_RULE_SYS_ID
    assert now_s <= int(reply.headers["X-RateLimit-Reset"]) <= now_s + 2
    assert reply.body == {
        "error": {
            "message": "Rate limit exceeded",
            "detail": "Rate limit of 100 requests per hour for Connect Support API exceeded",
        },
        "status": "failure",
    }


async def test_custom_body_and_headers_override_the_builtins(client):
    custom = rule(502, respond={"body": "<html>Bad gateway</html>", "headers": {"Content-Type": "text/html"}})
    await client.ok("POST", "faults", custom)
    reply = await client.api("GET", "/support/queues")
    assert (reply.status, reply.body) == (502, "<html>Bad gateway</html>")
    assert reply.headers["Content-Type"].startswith("text/html")


async def test_faulted_requests_have_no_side_effect(client, live):
    await client.ok("POST", "faults", rule(500, match={"method": "POST", "path_regex": MESSAGES}))
    reply = await client.api("POST", f"/conversations/{live['group']}/messages", {"message": "lost"})
    assert reply.status == 500
    assert "lost" not in [m["message"] for m in await client.messages(live["group"])]


async def test_delay_only_rule_slows_the_request_and_lets_it_through(client, live):
    await client.ok("POST", "faults", rule(None, respond={"delay_ms": 300}))
    loop = asyncio.get_running_loop()
    started = loop.time()
    reply = await client.api("GET", f"/conversations/{live['group']}/messages")
    assert reply.status == 200
    assert loop.time() - started >= 0.3
    (logged,) = [r for r in (await client.ok("GET", "requests"))["requests"] if r["fault"]]
    assert logged["status"] == 200


async def test_delay_lets_a_client_timeout_fire(client, live):
    await client.ok("POST", "faults", rule(None, respond={"delay_ms": 2000}))
    with pytest.raises(asyncio.TimeoutError):
        await client.http.get(
            f"{client.url}/api/now/connect/support/queues",
            timeout=aiohttp.ClientTimeout(total=0.2),
        )


async def test_drop_connection_is_a_disconnect_without_side_effects(client, live):
    drop = rule(match={"method": "POST", "path_regex": MESSAGES}, respond={"drop_connection": True})
    await client.ok("POST", "faults", drop)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await client.api("POST", f"/conversations/{live['group']}/messages", {"message": "vanishes"})
    assert "vanishes" not in [m["message"] for m in await client.messages(live["group"])]
    posted = await client.api("POST", f"/conversations/{live['group']}/messages", {"message": "arrives"})
    assert posted.status == 200
    dropped = [r for r in (await client.ok("GET", "requests"))["requests"] if r["dropped"]]
    assert [(r["method"], r["status"]) for r in dropped] == [("POST", None)]


async def test_session_matching_only_hits_that_session(client):
    target = await client.create_session("target")
    other = await client.create_session("other")
    await client.ok("POST", "faults", rule(500, times=None, match={"session": target["group"]}))
    assert (await client.api("GET", f"/conversations/{other['group']}/messages")).status == 200
    assert (await client.api("POST", f"/support/sessions/{other['group']}/leave", {})).status == 200
    assert (await client.api("GET", f"/conversations/{target['group']}/messages")).status == 500
    assert (await client.api("POST", f"/support/sessions/{target['group']}/leave", {})).status == 500
    assert (await client.api("GET", "/support/queues")).status == 200


async def test_method_and_api_matching(client):
    await client.ok("POST", "faults", rule(500, times=None, match={"api": "oauth"}))
    assert (await client.api("GET", "/support/queues")).status == 200
    assert (await client.token(grant_type="client_credentials")).status == 500
    await client.ok("DELETE", "faults")
    await client.ok("POST", "faults", rule(500, times=None, match={"method": "POST"}))
    assert (await client.api("GET", "/support/queues")).status == 200
    assert (await client.token(grant_type="client_credentials")).status == 200


async def test_oauth_401_fault_uses_the_oauth_body(client):
    await client.ok("POST", "faults", {"match": {"api": "oauth"}, "respond": {"status": 401}})
    reply = await client.token(grant_type="client_credentials")
    assert (reply.status, reply.body["error"]) == (401, "access_denied")


async def test_probability_zero_never_fires(client):
    await client.ok("POST", "faults", rule(500, times=None, probability=0.0))
    statuses = {(await client.api("GET", "/support/queues")).status for _ in range(20)}
    assert statuses == {200}


async def test_seeded_probability_is_reproducible(client):
    await client.ok("POST", "config", {"random_seed": 42})

    async def pattern():
        await client.ok("POST", "faults", rule(500, times=None, probability=0.5))
        return [(await client.api("GET", "/support/queues")).status for _ in range(30)]

    first = await pattern()
    await client.ok("POST", "config", {"random_seed": 7})
    await client.ok("POST", "config", {"random_seed": 42})  # a new seed re-seeds the draws
    await client.ok("DELETE", "faults")
    second = await pattern()
    assert first == second
    assert set(first) == {200, 500}


async def test_delete_clears_rules(client):
    await client.ok("POST", "faults", rule(500, times=None))
    assert (await client.api("GET", "/support/queues")).status == 500
    assert (await client.ok("DELETE", "faults")) == {"faults": [], "rate_limit": None}
    assert (await client.api("GET", "/support/queues")).status == 200


async def test_bad_rules_are_rejected(client):
    for bad in (
        {"match": {"api": "incident"}},
        {"respond": {"status": 42}},
        {"match": {"path_regex": "("}},
        {"times": 0},
        {"probability": 2},
        {"unexpected": True},
    ):
        assert (await client.control("POST", "faults", bad)).status == 400, bad


async def test_rate_limit_rule_counts_per_user_per_hour(client):
    await client.ok("POST", "config", {"basic_users": {DEFAULT_USER: "secret", "other": "pw"}})
    await client.ok("POST", "clock", {"now_ms": 1_700_000_000_000})
    await client.ok("POST", "faults", {"per_user_per_hour": 2, "scope": "connect"})
    first = await client.api("GET", "/support/queues")
    second = await client.api("GET", "/support/queues")
    third = await client.api("GET", "/support/queues")
    assert [first.status, second.status, third.status] == [200, 200, 429]
    assert first.headers["X-RateLimit-Limit"] == "2"
    assert first.headers["X-RateLimit-Reset"] == "1700002800"
    assert first.headers["X-RateLimit-Rule"] == RATE_LIMIT_RULE_SYS_ID
    assert third.headers["Retry-After"] == str(1_700_002_800 - 1_700_000_000)
    assert third.body["error"]["message"] == "Rate limit exceeded"
    other = await client.api("GET", "/support/queues", auth=aiohttp.BasicAuth("other", "pw"))
    assert other.status == 200
    await client.ok("POST", "clock", {"advance_ms": 3600 * 1000})
    assert (await client.api("GET", "/support/queues")).status == 200
