"""Push faults (issues 19 and 20): Virtual Agent pushes lost, repeated, reordered and delayed on purpose, seeded for
replay, set over the control plane (``{"push": ...}`` shorthand) or at start (``faults`` config); the default stays
"no retry", like ServiceNow's."""

from __future__ import annotations

import asyncio
from typing import Any, Dict, List

import aiohttp

from connectors.servicenow.emulator import EmulatorConfig, start_emulator
from connectors.servicenow.emulator.__main__ import build_config, parse_args

from .conftest import EmulatorClient
from .va_support import CallbackReceiver, VaClient, items_of

LIVE = 8  # callbacks of va.live(): 3 queueing + 5 accept


async def agent_says(va: VaClient, *texts: str) -> None:
    for text in texts:
        await va.client.ok("POST", "agent/message", {"session": "chat-1", "text": text})


def agent_texts(receiver: CallbackReceiver) -> List[str]:
    return [line.split(":", 1)[1] for line in items_of(receiver.payloads[LIVE:]) if line.startswith("OutputText:")]


def test_the_default_is_no_retry_like_servicenow():
    assert EmulatorConfig().va_callback_retries == 0


async def test_drop_the_next_two_pushes_loses_them_for_good(va, receiver):
    await va.live()
    reply = await va.client.ok("POST", "faults", {"push": "drop", "times": 2})
    assert reply["faults"][0]["match"]["api"] == "callback" and reply["faults"][0]["respond"]["drop_connection"]
    await agent_says(va, "one", "two", "three")
    await receiver.wait_for(LIVE + 1)
    log = (await va.settled())["callbacks"][LIVE:]
    assert [r["outcome"] for r in log] == ["dropped", "dropped", "delivered"]
    assert agent_texts(receiver) == ["three"]
    # The lost ones are still ServiceNow's record of the conversation (what a reconciler reads).
    kept = [item["messageId"] for r in log for item in r["payload"]["body"]]
    assert len(kept) == 3 and (await va.client.ok("GET", "faults"))["faults"][0]["fired"] == 2


async def test_a_dropped_push_is_retried_only_when_retries_are_configured(va, receiver):
    await va.live()
    await va.client.ok("POST", "config", {"va_callback_retries": 1, "va_callback_retry_delay_ms": 0})
    await va.client.ok("POST", "faults", {"push": "drop"})
    await agent_says(va, "one")
    await receiver.wait_for(LIVE + 1)
    log = (await va.settled())["callbacks"][LIVE:]
    assert [(r["attempt"], r["outcome"]) for r in log] == [(1, "dropped"), (2, "delivered")]


async def test_fail_counts_the_attempt_as_a_5xx(va, receiver):
    await va.live()
    await va.client.ok("POST", "faults", {"push": "fail", "status": 503, "session": "chat-1"})
    await agent_says(va, "one", "two")
    await receiver.wait_for(LIVE + 1)
    log = (await va.settled())["callbacks"][LIVE:]
    assert [(r["outcome"], r["status"]) for r in log] == [("fault", 503), ("delivered", 200)]


async def test_duplicate_repeats_a_push(va, receiver):
    await va.live()
    await va.client.ok("POST", "faults", {"push": "duplicate"})
    await agent_says(va, "one", "two")
    await receiver.wait_for(LIVE + 3)
    assert agent_texts(receiver) == ["one", "one", "two"]
    first, repeat = receiver.received[LIVE : LIVE + 2]
    assert first.raw == repeat.raw


async def test_hold_sends_the_next_push_first(va, receiver):
    await va.live()
    await va.client.ok("POST", "faults", {"push": "hold"})
    await agent_says(va, "one", "two", "three")
    await receiver.wait_for(LIVE + 3)
    assert agent_texts(receiver) == ["two", "one", "three"]
    log = (await va.settled())["callbacks"][LIVE:]
    assert [r["fault"] is not None for r in log] == [False, True, False]


async def test_a_held_push_with_nothing_behind_it_goes_out_after_its_limit(va, receiver):
    await va.live()
    await va.client.ok("POST", "faults", {"push": "hold", "delay_ms": 50})
    await agent_says(va, "alone")
    await receiver.wait_for(LIVE + 1)
    assert agent_texts(receiver) == ["alone"]


async def test_delay_lets_later_pushes_overtake(va, receiver):
    await va.live()
    await va.client.ok("POST", "faults", {"push": "delay", "delay_ms": 300})
    await agent_says(va, "late", "early")
    await receiver.wait_for(LIVE + 2)
    assert agent_texts(receiver) == ["early", "late"]


async def test_bad_push_rules_are_400(client):
    for bad in (
        {"push": "explode"},
        {"push": "drop", "unexpected": 1},
        {"push": "drop", "probability": 3},
        {"push": "hold", "times": 0},
        {"match": {"api": "va"}, "respond": {"hold": True}},
        {"match": {"api": "callback"}, "respond": {"duplicate": "yes"}},
    ):
        assert (await client.control("POST", "faults", bad)).status == 400, bad


async def _drop_pattern(seed: int, sessions: List[str]) -> Dict[str, List[str]]:
    """Which pushes of each session a 50 % drop rule loses, on a fresh emulator with ``seed``."""
    receiver = CallbackReceiver()
    await receiver.start()
    config = EmulatorConfig(random_seed=seed, va_callback_url=receiver.url,
                            faults=[{"push": "drop", "probability": 0.5, "times": None, "session": s} for s in sessions])
    try:
        async with await start_emulator(config) as emulator, aiohttp.ClientSession() as http:
            va = VaClient(EmulatorClient(http, emulator), receiver)
            # Sessions interleave differently from one run to the other: each rule's draws must not care.
            for index, session in enumerate(sessions if seed % 2 else list(reversed(sessions))):
                for n in range(12):
                    await va.send(f"{session}-{n}", session=session)
            log = (await va.settled())["callbacks"]
            return {s: [r["outcome"] for r in log if r["session"] == s] for s in sessions}
    finally:
        await receiver.close()


async def test_probability_drops_replay_with_the_same_seed_whatever_the_interleaving():
    first = await _drop_pattern(41, ["a", "b"])
    again = await _drop_pattern(43, ["a", "b"])  # another seed: another pattern
    same = await _drop_pattern(41, ["a", "b"])
    assert first == same
    assert first != again
    assert all({"dropped", "delivered"} == set(outcomes) for outcomes in first.values())


async def test_faults_from_the_config_are_in_force_at_start_and_after_a_reset(receiver):
    args = parse_args(["--set", 'faults=[{"push": "drop", "times": 1}]', "--set", f"va_callback_url={receiver.url}"])
    config = build_config(args)
    async with await start_emulator(config) as emulator, aiohttp.ClientSession() as http:
        client = EmulatorClient(http, emulator)
        va = VaClient(client, receiver)
        listed = await client.ok("GET", "faults")
        assert len(listed["faults"]) == 1 and isinstance(listed["seed"], int)
        await va.send("one")
        await va.send("two")
        await receiver.wait_for(1)
        assert [r["outcome"] for r in (await va.settled())["callbacks"]] == ["dropped", "delivered"]
        await client.ok("POST", "reset")
        await client.ok("POST", "config", {"va_callback_url": receiver.url})
        assert (await client.ok("GET", "faults"))["faults"][0]["fired"] == 0
        # Setting the key at run time replaces the rules.
        await client.ok("POST", "config", {"faults": []})
        assert (await client.ok("GET", "faults"))["faults"] == []


async def test_a_bad_faults_config_is_refused():
    for bad in ([{"push": "explode"}], {"push": "drop"}):
        try:
            EmulatorConfig(faults=bad)  # type: ignore[arg-type]
        except ValueError as exc:
            assert "faults" in str(exc)
        else:
            raise AssertionError(f"accepted {bad!r}")


async def test_inbound_faults_cover_5xx_timeouts_and_429_on_both_apis(va, client, live):
    """ServiceNow having a bad day, on Connect and on the Virtual Agent API: a 503, a 429 with Retry-After, a request
    that hangs past the client's timeout and is then cut, and one that is answered late (after it was processed)."""
    rules: List[Dict[str, Any]] = [
        {"match": {"api": "va"}, "respond": {"status": 503}},
        {"match": {"api": "va"}, "respond": {"status": 429, "headers": {"Retry-After": "7"}}},
        {"match": {"api": "connect", "method": "POST"}, "respond": {"delay_ms": 300, "drop_connection": True}},
    ]
    await client.ok("POST", "faults", rules)
    assert (await va.post(va.body("hi"))).status == 503
    limited = await va.post(va.body("hi"))
    assert limited.status == 429 and limited.headers["Retry-After"] == "7"
    assert "VA Bot Integration API" in limited.body["error"]["detail"]
    timeout = aiohttp.ClientTimeout(total=0.1)
    try:
        await client.http.post(f"{client.url}/api/now/connect/conversations/{live['group']}/messages",
                               json={"message": "lost"}, timeout=timeout, auth=aiohttp.BasicAuth("rasa.integration", "secret"),
                               headers={"Accept": "application/json"})
    except asyncio.TimeoutError:
        pass
    else:
        raise AssertionError("the request should have timed out")
    texts = [m["message"] for m in await client.messages(live["group"])]
    assert "lost" not in texts
