"""The webhook door: the Rasa input/output channel that ``credentials.yml``
loads as ``connectors.servicenow.ServiceNowInput``, served under
``/webhooks/servicenow/`` (routes.py lists the routes).

A bot response with a custom payload ``{"handoff": {...}}`` starts the
handoff; no action server or policy is involved (a custom action's
``dispatcher.utter_message(json_message=...)`` arrives the same way). In a
turn Rasa runs outside a request, ``{"handoff": {"end": true}}`` ends it.
When a handoff ends the bot takes the hand-back turn (core/handback.py).
"""

from typing import Any, Dict, List, Optional

from sanic import Blueprint

from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.core.core import Core
from connectors.servicenow.doors.routes import HTTPRoutes
from connectors.servicenow.identity import Claims
from connectors.servicenow.logsafe import escape_log_arguments, redact_access_log_tokens
from connectors.servicenow.ops.logs import use_json_logs
from connectors.servicenow.payloads import UserPayload
from connectors.servicenow.rasa_glue.channels import InputChannel, OutputChannel
from connectors.servicenow.rasa_glue.output import OnNewMessage
from connectors.servicenow.rasa_glue.versions import expand_deferred_variables
from connectors.servicenow.rasa_glue.workers import check_workers
from connectors.servicenow.store import Store


class ServiceNowInput(InputChannel):
    @classmethod
    def name(cls) -> str:
        return "servicenow"

    @classmethod
    def from_credentials(cls, credentials: Optional[Dict[str, Any]]) -> InputChannel:
        if not credentials:
            cls.raise_missing_credentials_exception()
        settings = ServiceNowSettings.from_credentials(expand_deferred_variables(credentials or {}))
        check_workers(settings.redis_url)
        if settings.log_format == "json":
            use_json_logs()
        return cls(settings)

    def __init__(self, settings: ServiceNowSettings, store: Optional[Store] = None) -> None:
        """``store``: where handoff state lives, for a core of this door's
        own; by default the core of ``Core.for_door`` (shared with a
        socket.io door of the same options)."""
        # Sender and chat ids reach many log lines; none may forge one.
        escape_log_arguments("connectors.servicenow")
        # A stream's JWT may ride in its query string; the access log must not keep it.
        redact_access_log_tokens()
        self.settings = settings
        self.core = Core(settings, store) if store is not None else Core.for_door(settings, self.name())
        self.routes = HTTPRoutes(self.core, self.name())

    def bind(self, app: Any) -> None:
        """Remember the app whose ``ctx.agent`` serves this channel."""
        self.core.bind(app)

    async def handle(self, payload: UserPayload, on_new_message: OnNewMessage, claims: Optional[Claims] = None) -> List[Any]:
        """What the webhook does with a valid message."""
        return await self.routes.handle(payload, on_new_message, claims)

    def get_output_channel(self) -> OutputChannel:
        """Where Rasa sends messages it produces outside a webhook request
        (``output_channel=latest`` on its HTTP API, reminders)."""
        return self.core.out_of_band_output()

    def blueprint(self, on_new_message: OnNewMessage) -> Blueprint:
        blueprint = Blueprint(f"{self.name()}_webhook", __name__)
        self.routes.add(blueprint, on_new_message)
        return blueprint
