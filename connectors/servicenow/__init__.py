"""Hand a Rasa conversation to a human agent in ServiceNow, and take it back.

Load the channel from ``credentials.yml``::

    connectors.servicenow.ServiceNowInput:
      instance_url: https://example.service-now.com
      api: connect
      username: ${SERVICENOW_USERNAME}
      password: ${SERVICENOW_PASSWORD}
      queue_id: ${SERVICENOW_QUEUE_ID}

Where things live:

``channel``     the Rasa input/output channel (webhook, stream, output channels)
``socketio_channel``  the socket.io front door (``ServiceNowSocketIOInput``)
``frontdoor``   the core both doors hand a user's message to
``handoff``     starting, forwarding and ending a handoff
``state``       the handoff slots and their transitions
``relay``       carrying agent messages to the user (polling, ordering, dedupe)
``delivery``    out-of-band delivery: callback URL and Server-Sent Events
``backends``    the ServiceNow API clients, one module per API
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
        from connectors.servicenow.channel import ServiceNowInput

        return ServiceNowInput
    if name == "ServiceNowSocketIOInput":
        from connectors.servicenow.socketio_channel import ServiceNowSocketIOInput

        return ServiceNowSocketIOInput
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
