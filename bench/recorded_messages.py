"""What recording the user's messages to the agent (``record_user_messages``)
costs the bot's later turns in that conversation.

    python -m bench.recorded_messages [--rounds 80] [--model models/demo.tar.gz]

In process, with the demo model and Rasa's in-memory tracker store: each
round makes one conversation per variant with a finished handoff in its
history (the agent's messages, as ``record_transcript`` leaves them, and
0..N recorded user messages), then times one bot turn ("hi") in each. The
variants take turns within a round, the order flipping every round, because
the in-memory store's heap grows over the run and would otherwise fall on
whichever variant comes last. Prints the median and p90 per variant."""

import argparse
import asyncio
import gc
import statistics
import time
from typing import Dict, List, Tuple

from rasa.core.agent import Agent
from rasa.core.channels.channel import CollectingOutputChannel
from rasa.shared.core.events import ActionExecuted, BotUttered, Event, SlotSet, UserUttered

from connectors.servicenow.rasa_glue.slots import user_message_event

#: (recorded user messages, agent messages) per variant.
VARIANTS: Tuple[Tuple[int, int], ...] = ((0, 50), (50, 50), (0, 100), (200, 50), (0, 250))


def handoff_history(recorded: int, agent_messages: int) -> List[Event]:
    events: List[Event] = [
        UserUttered("talk to live agent", intent={"name": "human_handoff", "confidence": 1.0}),
        ActionExecuted("utter_handoff"),
        ActionExecuted("action_listen"),
        SlotSet("handoff_active", True),
    ]
    for number in range(max(recorded, agent_messages)):
        if number < recorded:
            events.append(user_message_event(f"user message {number}", "chat"))
        if number < agent_messages:
            events.append(BotUttered(f"agent message {number}", metadata={"source": "agent"}))
    events += [
        SlotSet("handoff_active", False),
        UserUttered("EXTERNAL: handoff_ended", intent={"name": "handoff_ended", "confidence": 1.0}),
        ActionExecuted("action_listen"),
    ]
    return events


async def measure(model: str, rounds: int) -> Dict[Tuple[int, int], List[float]]:
    agent = Agent.load(model)
    gc.collect()
    gc.freeze()  # as the channel does at start (freeze_gc_at_start)
    times: Dict[Tuple[int, int], List[float]] = {variant: [] for variant in VARIANTS}
    for number in range(rounds):
        for variant in VARIANTS if number % 2 == 0 else VARIANTS[::-1]:
            sender = f"bench-{variant[0]}-{variant[1]}-{number}"
            tracker = await agent.processor.fetch_tracker_and_update_session(sender)
            for event in handoff_history(*variant):
                tracker.update(event, agent.domain)
            await agent.tracker_store.save(tracker)
            output = CollectingOutputChannel()
            started = time.perf_counter()
            await agent.handle_text({"text": "hi", "sender_id": sender}, output_channel=output)
            times[variant].append((time.perf_counter() - started) * 1000)
            assert output.messages and output.messages[0]["text"].startswith("Hello"), output.messages
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=80)
    parser.add_argument("--model", default="models/demo.tar.gz")
    args = parser.parse_args()
    times = asyncio.run(measure(args.model, args.rounds))
    for (recorded, agent_messages), values in times.items():
        values = sorted(values[min(10, len(values) // 4):])  # the first rounds warm up
        print(
            f"{recorded:4d} recorded user messages, {agent_messages:4d} agent messages: "
            f"bot turn median {statistics.median(values):6.1f} ms, p90 {values[int(len(values) * 0.9)]:6.1f} ms"
        )


if __name__ == "__main__":
    main()
