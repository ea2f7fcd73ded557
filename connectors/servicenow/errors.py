"""The exceptions the connector raises, as a small hierarchy.

Callers decide what a failure means for the user by its class: a
``ServiceNowUnavailable`` (retries exhausted) or a ``ServiceNowRejected`` (a
definite "no" from the instance) ends the handoff with a summary, whereas a
``ConfigurationError`` stops ``rasa run`` before it serves anything.
"""

from typing import Optional

from rasa.shared.exceptions import RasaException


class ConfigurationError(RasaException):
    """The channel's section of ``credentials.yml`` is invalid.

    A ``RasaException`` so that ``rasa run`` prints the message and exits
    instead of dumping a stack trace.
    """


class ServiceNowError(Exception):
    """Talking to ServiceNow failed."""


class ServiceNowUnavailable(ServiceNowError):
    """ServiceNow kept failing (5xx, 429, timeouts, dropped connections) after bounded retries."""

    def __init__(self, message: str, *, attempts: int, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.status = status


class ServiceNowRejected(ServiceNowError):
    """ServiceNow answered with a 4xx that retrying cannot fix (403, 404, 400, ...)."""

    def __init__(self, message: str, *, status: int, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class AuthenticationFailed(ServiceNowRejected):
    """The instance refused the configured credentials, also after getting a fresh token."""


class StoreUnavailable(Exception):
    """A store of handoff state failed: the tracker store (after bounded
    retries, for writes) or the connector's own store (Redis down or slow;
    ``store.StoreUnavailable`` is a subclass, so one ``except`` catches both).
    Whether the conversation is in handoff is unknown, or its new handoff
    state is not saved.

    Never a reason to treat a conversation as not in handoff: the webhook
    answers 503 and the client retries."""


class ConversationBusy(Exception):
    """An earlier message of the same conversation is still being handled (a
    handoff opening, typically) and did not finish within the wait allowed."""


class UnsafeChatId(ServiceNowRejected):
    """A chat id (from a tracker's ``live_chat_id`` slot or a callback) that is
    not the shape ServiceNow gives out. It is never put into a request; the
    handoff that holds it ends as a failure."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=400)
