"""1. Bot turns outside a handoff: this channel's webhook against Rasa's own
REST channel, in the same ``rasa run``, same model, requests interleaved.

Each channel gets its own senders with the same history (fresh, or 500
events), so neither reads the other's trackers. Latency: one request at a
time, alternating channels, after one warm-up message per sender (the
channel reads a sender's tracker once to learn it is not in handoff; that is
the cost the registry saves on every later message). Throughput: closed loops
of 8 concurrent requests, the channels taking turns, repeated; with a fresh
history each worker moves to a new conversation every 20 turns, so new users
(and this channel's one tracker read for each) are part of the mix."""

from typing import Any, Dict, List

from bench.fixtures import Context, servicenow_and_rasa, sqlite_store
from bench.load import Stats, closed_loop, gather_limited, get_json, post_json, timed_post

CHANNELS = {"rest": "/webhooks/rest/webhook", "servicenow": "/webhooks/servicenow/webhook"}
CONCURRENCY = 8
SENDERS_PER_CHANNEL = CONCURRENCY
TURNS_PER_FRESH_SENDER = 20


def history(events: int) -> List[Dict[str, Any]]:
    """``events`` tracker events, four per greeting turn."""
    turns = []
    for _ in range(events // 4):
        turns += [
            {"event": "user", "text": "hi", "parse_data": {"intent": {"name": "greet", "confidence": 1.0}, "entities": [], "text": "hi"}},
            {"event": "action", "name": "utter_greet"},
            {"event": "bot", "text": "Hello! I'm the virtual assistant."},
            {"event": "action", "name": "action_listen"},
        ]
    return turns


async def run(ctx: Context) -> Dict[str, Any]:
    results: Dict[str, Any] = {}
    for store in ("memory", "sql"):
        tracker_store = sqlite_store(ctx.workdir, "bot-turns") if store == "sql" else None
        async with servicenow_and_rasa(ctx, "connect", tracker_store=tracker_store, name=f"bot-turns-{store}") as (_, rasa):
            for events in (0, ctx.sizes.history_events):
                label = f"{store} tracker store, {'fresh' if events == 0 else f'{events}-event'} history"
                results[label] = await _compare(ctx, rasa.url, prefix=f"{store}-{events}", events=events)
    return results


async def _compare(ctx: Context, base: str, *, prefix: str, events: int) -> Dict[str, Any]:
    senders = {channel: [f"{prefix}-{channel}-{n}" for n in range(SENDERS_PER_CHANNEL)] for channel in CHANNELS}
    if events:
        loads = [
            lambda sender=sender: post_json(ctx.http, f"{base}/conversations/{sender}/tracker/events", history(events))
            for group in senders.values() for sender in group
        ]
        await gather_limited(loads, 4)
        tracker = await get_json(ctx.http, f"{base}/conversations/{senders['servicenow'][0]}/tracker")
        assert len(tracker["events"]) >= events, f"history not loaded: {len(tracker['events'])} events"
    for channel, group in senders.items():
        for sender in group:
            await post_json(ctx.http, base + CHANNELS[channel], {"sender": sender, "message": "hi"})

    latencies: Dict[str, List[float]] = {channel: [] for channel in CHANNELS}
    order = list(CHANNELS)
    for index in range(ctx.sizes.latency_requests):
        for channel in (order if index % 2 == 0 else order[::-1]):
            sender = senders[channel][index % SENDERS_PER_CHANNEL]
            elapsed, replies = await timed_post(ctx.http, base + CHANNELS[channel], {"sender": sender, "message": "hi"})
            assert replies and replies[0]["text"].startswith("Hello"), replies
            latencies[channel].append(elapsed)

    rates: Dict[str, List[float]] = {channel: [] for channel in CHANNELS}
    for repeat in range(ctx.sizes.repeats):
        for channel in (order if repeat % 2 == 0 else order[::-1]):
            async def turn(worker: int, number: int, channel: str = channel, repeat: int = repeat) -> bool:
                sender = senders[channel][worker]
                if not events:
                    # A fresh history stays fresh: Rasa's turn gets slower as a
                    # conversation grows, which would blur the comparison.
                    sender = f"{sender}-r{repeat}-{number // TURNS_PER_FRESH_SENDER}"
                replies = await post_json(ctx.http, base + CHANNELS[channel], {"sender": sender, "message": "hi"})
                return bool(replies)

            rates[channel].append((await closed_loop(turn, CONCURRENCY, ctx.sizes.throughput_seconds)).per_second)

    rest, servicenow = Stats.of(latencies["rest"]), Stats.of(latencies["servicenow"])
    rest_rate, servicenow_rate = Stats.of(rates["rest"]).median, Stats.of(rates["servicenow"]).median
    return {
        "latency_ms": {"rest": rest.as_dict(), "servicenow": servicenow.as_dict()},
        "median_ratio": round(servicenow.median / rest.median, 4),
        "throughput_per_s": {"rest": round(rest_rate, 1), "servicenow": round(servicenow_rate, 1)},
        "throughput_ratio": round(servicenow_rate / rest_rate, 4),
        "throughput_runs": {channel: [round(rate, 1) for rate in values] for channel, values in rates.items()},
    }
