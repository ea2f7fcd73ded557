"""Serve the ServiceNow channel the way ``rasa run`` serves it, without a
model: for the channel-level scenarios, which measure the channel's own
paths (a user's message forwarded during a handoff, an agent's message
delivered to the user) on any Rasa, Rasa Pro included, whose server needs a
licence we do not have.

Run with a build's Python, in the build's checkout::

    python bench/channel_host.py --port 5105 --channel channel.json --domain domain.yml 2> host.log

What is Rasa's here, as ``rasa run`` does it (``rasa/core/run.py``:
``serve_application``): the app comes from Rasa's ``configure_app`` (no HTTP
API), which registers the channel's blueprint under ``/webhooks/`` through
``rasa.core.channels.channel.register``; the agent is put on ``app.ctx`` in a
``before_server_start`` listener; the app runs in one process. The agent is a
real ``rasa.core.agent.Agent`` with the domain, an ``InMemoryTrackerStore``
and an ``InMemoryLockStore``, and no model: ``BenchAgent`` answers
``is_ready()`` once its stores exist, and plays the bot's part of a turn
(logs the user's message to the tracker under the conversation's lock, then
sends ``utter_handoff``'s payload to a message starting with "talk to live
agent", a greeting otherwise). Scenarios that need a real bot turn use
``rasa run``. One route of Rasa's HTTP API is added, read-only:
``GET /conversations/<id>/tracker``, which the scenarios read the live chat id
from.

Standalone on purpose: it runs in every build's environment, so it imports
nothing of the bench, and of the connector only its public channel class.
"""

import argparse
import inspect
import json
import sys
from typing import Any

from rasa.core.agent import Agent
from rasa.core.channels.channel import UserMessage
from rasa.core.lock_store import InMemoryLockStore
from rasa.core.run import configure_app
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import UserUttered
from rasa.utils.common import configure_logging_and_warnings
from rasa.utils.io import configure_colored_logging
from rasa.utils.log_utils import configure_structlog
from sanic import Sanic
from sanic.request import Request
from sanic.response import HTTPResponse, json as json_response

try:  # Rasa 3.6 .. Rasa Pro 3.12
    from rasa.core.tracker_store import InMemoryTrackerStore
except ImportError:  # Rasa Pro 3.13 on
    from rasa.core.tracker_stores.tracker_store import InMemoryTrackerStore

from connectors.servicenow import ServiceNowInput

HANDOFF_REQUEST = "talk to live agent"
HANDOFF_RESPONSE = {"custom": {"handoff": {}}}
GREETING = {"text": "Hello! I'm the virtual assistant."}


class BenchAgent(Agent):
    """Rasa's agent with its stores and no model (see the module's doc)."""

    def is_ready(self) -> bool:
        return self.tracker_store is not None and self.lock_store is not None

    async def handle_message(self, message: UserMessage) -> Any:
        async with self.lock_store.lock(message.sender_id):
            tracker = await self.tracker_store.get_or_create_tracker(message.sender_id)
            tracker.update(UserUttered(message.text, input_channel=message.input_channel, metadata=message.metadata))
            await self.tracker_store.save(tracker)
            answer = HANDOFF_RESPONSE if (message.text or "").startswith(HANDOFF_REQUEST) else GREETING
            await message.output_channel.send_response(message.sender_id, dict(answer))
        return None


def build_app(channel_options: dict, domain: Domain, port: int) -> Sanic:
    channel = ServiceNowInput.from_credentials(channel_options)
    app = configure_app(input_channels=[channel], enable_api=False, route="/webhooks/", port=port)
    agent = BenchAgent(domain=domain, tracker_store=InMemoryTrackerStore(domain), lock_store=InMemoryLockStore())

    async def put_agent(running: Sanic, *_: Any) -> None:
        running.ctx.agent = agent

    app.register_listener(put_agent, "before_server_start")

    @app.get("/conversations/<conversation_id>/tracker")
    async def tracker(_: Request, conversation_id: str) -> HTTPResponse:
        found = await agent.tracker_store.retrieve(conversation_id)
        if found is None:
            return json_response({"reason": "NotFound"}, status=404)
        return json_response(found.current_state())

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--channel", required=True, help="JSON file: the channel's credentials section")
    parser.add_argument("--domain", required=True, help="the domain whose slots the channel writes")
    arguments = parser.parse_args()
    # Logging as `rasa run` sets it up (rasa/__main__.py), at Rasa's default
    # level: each Rasa (Rasa Pro logs through structlog) pays for its own.
    configure_logging_and_warnings(None, None, warn_only_once=True, filter_repeated_logs=True)
    configure_colored_logging(None)
    configure_structlog(None)
    with open(arguments.channel) as source:
        options = json.load(source)
    app = build_app(options, Domain.load(arguments.domain), arguments.port)
    run = dict(host="127.0.0.1", port=arguments.port, access_log=False, workers=1)
    parameters = inspect.signature(app.run).parameters
    if "single_process" in parameters:  # Sanic 22.9 on (Rasa Pro): in this process, as Rasa Pro's serve does
        run["single_process"] = True
        run.pop("workers")
    if "motd" in parameters:
        run["motd"] = False
    app.run(**run)


if __name__ == "__main__":
    sys.exit(main())
