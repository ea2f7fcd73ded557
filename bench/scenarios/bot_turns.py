"""1. Bot turns outside a handoff: this channel's webhook against Rasa's own
REST channel, in the same ``rasa run``, same model, requests interleaved.

Each channel gets its own conversations with the same history (fresh, or
500 events), and a conversation serves at most 20 turns before another takes
over: Rasa's turn gets slower as a conversation grows (markedly with the
in-memory tracker store), which would otherwise drift under the measurement.
Latency: one request at a time, alternating channels, after one warm-up
message per conversation (the channel reads a sender's tracker once to learn
it is not in handoff; that is the cost the registry saves on every later
message). Throughput: closed loops of 8 concurrent requests, the channels
taking turns, repeated; fresh conversations are new ids, so new users (and
this channel's one tracker read for each) are part of the mix."""

from typing import Any, Dict, List

from bench.fixtures import Context, servicenow_and_rasa, sqlite_store
from bench.load import Stats, closed_loop, gather_limited, get_json, post_json, timed_post

CHANNELS = {"rest": "/webhooks/rest/webhook", "servicenow": "/webhooks/servicenow/webhook"}
CONCURRENCY = 8
# Turns one conversation serves in a measurement before a new one takes over.
TURNS_PER_SENDER = 20


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
    order = list(CHANNELS)
    # Conversations stay near their starting size: a sender serves a few
    # turns, then a new one takes over. With a history, every sender is
    # prepared beforehand; fresh ones are simply new conversation ids.
    latency_pool = {channel: [f"{prefix}-lat-{channel}-{n}" for n in range(_senders_for(ctx))] for channel in CHANNELS}
    run_pool = {
        (repeat, channel): [f"{prefix}-run{repeat}-{channel}-{worker}" for worker in range(CONCURRENCY)]
        for repeat in range(ctx.sizes.repeats) for channel in CHANNELS
    }
    if events:
        prepared = [sender for pool in (*latency_pool.values(), *run_pool.values()) for sender in pool]
        await gather_limited(
            [lambda sender=sender: post_json(ctx.http, f"{base}/conversations/{sender}/tracker/events", history(events)) for sender in prepared],
            4,
        )
        tracker = await get_json(ctx.http, f"{base}/conversations/{prepared[0]}/tracker")
        assert len(tracker["events"]) >= events, f"history not loaded: {len(tracker['events'])} events"
    for channel, pool in latency_pool.items():
        for sender in pool:  # the channel's one tracker read per sender happens here
            await post_json(ctx.http, base + CHANNELS[channel], {"sender": sender, "message": "hi"})

    latencies: Dict[str, List[float]] = {channel: [] for channel in CHANNELS}
    for index in range(ctx.sizes.latency_requests):
        for channel in (order if index % 2 == 0 else order[::-1]):
            sender = latency_pool[channel][index // TURNS_PER_SENDER]
            elapsed, replies = await timed_post(ctx.http, base + CHANNELS[channel], {"sender": sender, "message": "hi"})
            assert replies and replies[0]["text"].startswith("Hello"), replies
            latencies[channel].append(elapsed)

    rates: Dict[str, List[float]] = {channel: [] for channel in CHANNELS}
    for repeat in range(ctx.sizes.repeats):
        for channel in (order if repeat % 2 == 0 else order[::-1]):
            workers = run_pool[(repeat, channel)]

            async def turn(worker: int, number: int, workers: List[str] = workers, channel: str = channel) -> bool:
                sender = workers[worker] if events else f"{workers[worker]}-{number // TURNS_PER_SENDER}"
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


def _senders_for(ctx: Context) -> int:
    return -(-ctx.sizes.latency_requests // TURNS_PER_SENDER)
