"""A server process for the tests, built the way ``rasa run`` builds one but
without Rasa's licensed CLI: a Sanic app whose channel routes come from
Rasa's own ``rasa.core.channels.channel.register`` (the function ``rasa run``
mounts every input channel with, under ``/webhooks/``), the demo assistant as
``app.ctx.agent`` (tests/assistant.py), run by Sanic's own runner.

``python -m tests.pro.serve --port N --channel CLASS --options JSON [--model PATH]``
prints ``serving on <url>`` once it answers. One route of its own,
``GET /test/slots/<sender>``, shows a conversation's slots to the tests.
"""

import argparse
import logging
import json
import sys
from pathlib import Path
from typing import Any, Optional

from rasa.core.channels.channel import register
from rasa.shared.utils.common import class_from_module_path
from sanic import Sanic, response

from tests.assistant import demo_agent


def build(
    channel_path: str, options: dict, model: Optional[Path], port: int, endpoints: Optional[dict] = None,
    cors: Optional[str] = None,
) -> Sanic:
    channel_class: Any = class_from_module_path(channel_path)
    channel = channel_class.from_credentials(options)
    app = Sanic("servicenow_test_server")
    if cors:
        _allow_origin(app, cors)
    register([channel], app, route="/webhooks/")

    @app.listener("before_server_start")
    async def load(app: Sanic, *_: Any) -> None:
        app.ctx.agent = await demo_agent(model, endpoints)

    @app.listener("after_server_start")
    async def announce(app: Sanic, *_: Any) -> None:
        print(f"serving on http://127.0.0.1:{port}", flush=True)

    @app.get("/test/slots/<sender>")
    async def slots(_request: Any, sender: str) -> Any:
        tracker = await app.ctx.agent.tracker_store.retrieve(sender)
        return response.json(tracker.current_slot_values() if tracker is not None else None)

    @app.get("/test/version")
    async def version(_request: Any) -> Any:
        from connectors.servicenow.rasa_glue.versions import RASA_NAME, python_version

        return response.json({"rasa": RASA_NAME, "python": python_version()})

    @app.get("/test/routes")
    async def routes(_request: Any) -> Any:
        return response.json(sorted({"/" + route.path.lstrip("/") for route in app.router.routes}))

    return app


def _allow_origin(app: Sanic, origin: str) -> None:
    """What ``rasa run --cors ORIGIN`` does, with Rasa's own helper."""
    try:
        from rasa.utils.cors import configure_cors  # Rasa Pro
    except ImportError:
        from rasa.server import configure_cors  # Rasa 3.6
    configure_cors(app, origin)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--channel", default="connectors.servicenow.ServiceNowInput")
    parser.add_argument("--options", required=True, help="the channel's credentials.yml section, as JSON")
    parser.add_argument("--model")
    parser.add_argument("--endpoints", help="tracker_store and lock_store as in endpoints.yml, as JSON")
    parser.add_argument("--cors", help="the origin allowed, as rasa run --cors")
    arguments = parser.parse_args()
    # What `rasa run` sets up (INFO by default); here WARNING, as the tests and the
    # bench read no log line. Without it Rasa Pro's structlog prints every debug event.
    logging.basicConfig(level=logging.WARNING)
    from rasa.utils.log_utils import configure_structlog

    configure_structlog(logging.WARNING)
    options = json.loads(arguments.options)
    endpoints = json.loads(arguments.endpoints) if arguments.endpoints else None
    app = build(arguments.channel, options, Path(arguments.model) if arguments.model else None, arguments.port, endpoints, arguments.cors)
    run: Any = {"host": "127.0.0.1", "port": arguments.port, "access_log": False, "workers": 1}
    try:
        from sanic.application.constants import ServerStage  # noqa: F401  (sanic 22+)

        run["single_process"] = True
    except ImportError:
        pass
    app.run(**run)


if __name__ == "__main__":
    sys.exit(main())
