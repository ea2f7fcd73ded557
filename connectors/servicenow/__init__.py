"""Hand a Rasa conversation to a human agent in ServiceNow, and take it back.

Load the channel from ``credentials.yml``::

    connectors.servicenow.ServiceNowInput:
      instance_url: https://example.service-now.com
      api: connect
      username: ${SERVICENOW_USERNAME}
      password: ${SERVICENOW_PASSWORD}
      queue_id: ${SERVICENOW_QUEUE_ID}

Where things live (docs/how-it-works.md draws it):

``doors``       the front doors: webhook (``ServiceNowInput``), socket.io
                (``ServiceNowSocketIOInput``), the chat page
``core``        what both doors hand a message to: routing, opening and ending
                handoffs, taking in ServiceNow's pushes and polls, timers, the hand-back
``outbox``      delivery to the user: one store-backed outbox and its sinks
                (callback URL, Server-Sent Events, socket.io)
``store``       where state lives: in the process, or in Redis (``redis_url``)
``servicenow``  the ServiceNow API clients, one module per API
``rasa_glue``   the one place that knows Rasa: tracker slots, the hand-back
                turn, NLG, output channels
``ops``         metrics, logs; ``doctor`` checks a setup
``emulator``    a local ServiceNow for the demo and the tests
"""

from typing import Any

__all__ = ["ServiceNowInput", "ServiceNowSocketIOInput"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so ``python -m connectors.servicenow.emulator``
    # starts without loading Rasa (and TensorFlow with it).
    if name in __all__:
        # Without rasa or rasa-pro this raises RasaNotInstalled, which says what to install.
        from connectors.servicenow.rasa_glue import versions  # noqa: F401
    if name == "ServiceNowInput":
        from connectors.servicenow.doors.webhook import ServiceNowInput

        return ServiceNowInput
    if name == "ServiceNowSocketIOInput":
        from connectors.servicenow.doors.socketio import ServiceNowSocketIOInput

        return ServiceNowSocketIOInput
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
