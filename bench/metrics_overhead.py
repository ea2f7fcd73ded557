"""Per-call cost of the metrics instrumentation on the paths that run per
message (``python bench/metrics_overhead.py``; timeit, a few seconds).

Forwarding a user message calls nothing of observe.py; its one ServiceNow
request pays ``servicenow_attempt``. A bot turn outside a handoff calls
nothing either; with metrics on, every response of the channel's routes
passes the response middleware (a status check). Agent messages pay
``agent_message_queued`` and ``reached_sink`` (and a dict lookup in
``agent_joined``)."""

import asyncio
import timeit
from types import SimpleNamespace

from connectors.servicenow.ops.metrics import HandoffMetrics
from connectors.servicenow.ops.observe import Observer

GROUP = "0123456789abcdef0123456789abcdef"
NUMBER = 200_000


def per_call_ns(statement, number: int = NUMBER) -> float:
    best = min(timeit.repeat(statement, number=number, repeat=5))
    return best / number * 1e9


def main() -> None:
    on = Observer(HandoffMetrics())
    off = Observer(None)
    path = f"/api/now/connect/conversations/{GROUP}/messages"
    on.handoff_started("u", "chat", 0.1)
    on.agent_joined("u", "chat")

    async def middleware(_request, answer):  # the shape of count_rejected_input
        if answer is not None and answer.status >= 400:
            raise AssertionError

    ok = SimpleNamespace(status=200)

    def run_middleware() -> None:
        coroutine = middleware(None, ok)
        try:
            coroutine.send(None)
        except StopIteration:
            pass

    counter = [0]

    def queue_and_sink() -> None:
        counter[0] += 1
        event_id = f"box-{counter[0]}"
        on.agent_message_queued(event_id, 0.0)
        on.reached_sink(event_id, "callback")

    rows = [
        ("ServiceNow attempt observed (metrics on)", lambda: on.servicenow_attempt("POST", path, 200, 0.01)),
        ("ServiceNow attempt, metrics off (not wired: no call)", lambda: None),
        ("response middleware, 200 answer (metrics on)", run_middleware),
        ("agent message queued + reached sink (metrics on)", queue_and_sink),
        ("agent_joined after the first (any message)", lambda: on.agent_joined("u", "chat")),
        ("agent message queued, metrics off", lambda: off.agent_message_queued("x", 0.0)),
        ("empty lambda (the floor)", lambda: None),
    ]
    for name, statement in rows:
        print(f"{per_call_ns(statement):8.0f} ns  {name}")


if __name__ == "__main__":
    asyncio.run(asyncio.sleep(0))
    main()
