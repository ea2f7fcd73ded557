"""The channel's options, read from its section of ``credentials.yml``.

Every option name here is public interface and documented in the README.
Values may arrive as strings because the shipped ``credentials.yml`` fills
them from environment variables (``${VAR}``); an empty string counts as
"not set", so one file serves the emulator, Basic auth and OAuth alike.
"""

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple
from urllib.parse import urlparse

from connectors.servicenow.availability import BusinessHours
from connectors.servicenow.attachments import (
    DEFAULT_ATTACHMENT_TYPES,
    DEFAULT_MAX_ATTACHMENT_BYTES,
    AttachmentPolicy,
    parse_hosts,
    parse_types,
)
from connectors.servicenow.egress import endpoint_of
from connectors.servicenow.errors import ConfigurationError
from connectors.servicenow.signing import secret_key
from connectors.servicenow.texts import UserTexts

CONNECT_API = "connect"
VIRTUAL_AGENT_API = "virtual_agent"
SUPPORTED_APIS = (CONNECT_API, VIRTUAL_AGENT_API)
DEFAULT_WEBHOOK_SECRET_HEADER = "X-Webhook-Secret"
DEFAULT_JWT_METHOD = "HS256"
#: A day: a chat session's token outlives any chat, and a stolen one dies soon.
DEFAULT_MAX_TOKEN_LIFETIME_S = 24 * 3600.0
DEFAULT_REDIS_PREFIX = "snow:"
#: The longest ``order_wait``: a second of room under ServiceNow's 5 s timeout on a push.
MAX_ORDER_WAIT_S = 4.0
#: What PyJWT verifies without extra packages, "none" never.
JWT_METHODS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA")


@dataclass(frozen=True)
class RetryPolicy:
    """How a ServiceNow call is retried before the failure counts."""

    attempts: int = 5
    #: First delay; it doubles per attempt (with jitter) up to ``max_backoff``.
    backoff: float = 0.5
    max_backoff: float = 8.0
    #: A ``Retry-After`` longer than this is cut short, so a misconfigured
    #: rate limit cannot park a chat for an hour.
    max_retry_after: float = 30.0


@dataclass(frozen=True)
class ServiceNowSettings:
    instance_url: str
    api: str = CONNECT_API
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    client_id: Optional[str] = None
    client_secret: Optional[str] = field(default=None, repr=False)
    queue_id: Optional[str] = None
    callback_url: Optional[str] = None
    #: Signs every POST to ``callback_url`` (``whsec_<base64>``, Standard Webhooks; signing.py).
    callback_secret: Optional[str] = field(default=None, repr=False)
    #: Seconds between polls of an active Connect chat.
    poll_interval: float = 1.0
    #: Seconds between polls once a chat has been quiet for ``idle_after``.
    idle_poll_interval: float = 10.0
    idle_after: float = 60.0
    #: Seconds of quiet after which (and between which) a poll checks the
    #: Connect session's state: the end-of-chat signal when no "has left/closed"
    #: system message arrives.
    session_check_interval: float = 30.0
    request_timeout: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_connections: int = 100
    verify_tls: bool = True
    end_chat_commands: Tuple[str, ...] = ("/end_chat",)
    max_message_length: int = 4000
    texts: UserTexts = field(default_factory=UserTexts)
    #: Serve the reference chat page at ``/webhooks/servicenow/chat``.
    chat_page: bool = False
    #: Record what the agent side said in the tracker (as ``bot`` events).
    record_transcript: bool = True
    #: Record the user's messages to the agent in the tracker (``user`` events without NLU).
    record_user_messages: bool = False
    #: The intent of the bot's turn when a handoff ends (handback.py); a
    #: domain without it gets no such turn.
    handback_intent: str = "handoff_ended"
    #: Once the model is loaded, move the objects that exist at that point
    #: out of the cyclic garbage collector's reach (``gc.freeze()``). Rasa's
    #: heap (TensorFlow, the model) is large, and a full collection that walks
    #: it stalls the event loop for about a quarter of a second, which polled
    #: chats feel as late replies. Turn off when models are swapped at run
    #: time through Rasa's API: a replaced model's cyclic garbage stays.
    freeze_gc_at_start: bool = True
    #: Remember which class each Rasa event name maps to instead of walking
    #: every ``Event`` subclass for each event read from the tracker store
    #: (rasa_tuning.py): tracker loads, Rasa's own and the transcript writes
    #: that share the event loop with callbacks, get several times cheaper.
    cache_event_classes: bool = True
    #: ``text`` (Rasa's log lines) or ``json`` (one JSON object per line; see logs.py).
    log_format: str = "text"
    #: Serve Prometheus metrics at ``/webhooks/servicenow/metrics`` (docs/metrics.md).
    metrics: bool = False
    #: Also (or instead) serve them on a port of their own, on ``metrics_host``; 0: no such port.
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    # -- waiting and availability (core/timers.py, availability.py) ----------
    #: Seconds a chat waits for an agent to accept before it is left (``no_agent``); 0: forever.
    agent_wait_timeout: float = 0.0
    #: Seconds between "still waiting" notices while no agent has joined; 0: none.
    waiting_notice_interval: float = 0.0
    #: Seconds a live chat may go without a message from the user before it is left (``user_idle``); 0: forever.
    user_idle_timeout: float = 0.0
    #: When chats may open; None: always.
    business_hours: Optional[BusinessHours] = None
    #: Connect: ask the queue whether anyone is available (``not_available``) before opening a chat.
    check_queue_availability: bool = True
    # -- Virtual Agent API -------------------------------------------------
    #: Shared secret ServiceNow sends in ``webhook_secret_header`` on every callback.
    webhook_secret: Optional[str] = field(default=None, repr=False)
    webhook_secret_header: str = DEFAULT_WEBHOOK_SECRET_HEADER
    #: Basic credentials ServiceNow's outbound REST message uses on callbacks.
    webhook_username: Optional[str] = None
    webhook_password: Optional[str] = field(default=None, repr=False)
    #: "Message Auth" on inbound calls: a static token (``token`` header) and/or
    #: the secret of the ``x-b2b-signature`` HMAC.
    message_token: Optional[str] = field(default=None, repr=False)
    message_hash_secret: Optional[str] = field(default=None, repr=False)
    #: Sent as ``contextVariables`` with the handoff, e.g. AWA queue routing.
    context_variables: Mapping[str, Any] = field(default_factory=dict)
    #: Language of the chat when the user's metadata does not say.
    language: Optional[str] = None
    #: ``appInboundId`` of a non-default provider application.
    app_inbound_id: Optional[str] = None
    #: Earlier turns sent as ``history`` with the handoff (0 sends none).
    history_turns: int = 20
    #: Report each agent message back with ``UPDATE_MESSAGES``.
    report_delivery: bool = False
    #: Read what the agent's side said back from ServiceNow's tables (Table API,
    #: ``interaction`` and ``sys_cs_message``): recovers messages whose push was
    #: lost and puts pushes that overtook each other in order (docs/reliability.md).
    reconcile: bool = True
    #: Seconds between two reads of a live chat's records, for the whole
    #: deployment (one request per chat per interval, under a per-chat lease).
    reconcile_interval: float = 60.0
    #: Longest a push waits for the read that puts it in ServiceNow's order, in
    #: seconds; 0 shows pushes as they arrive. Keep it well under ServiceNow's
    #: 5 s timeout on its pushes.
    order_wait: float = 1.0
    # -- limits and authentication of the user-facing routes (docs/security.md)
    #: Open ``/stream`` connections per conversation (429 beyond) and in total (503 beyond).
    max_streams_per_sender: int = 5
    #: Open streams and sockets per client address (429 beyond).
    max_streams_per_client: int = 50
    max_open_streams: int = 1000
    #: Seconds a request body may take to arrive in all (408 and the connection closed beyond).
    body_read_timeout: float = 10.0
    #: Request bodies read at once by a door (503 with ``Retry-After`` beyond).
    max_body_reads: int = 256
    #: Live chats at once in the deployment (0: no limit); beyond it ``messages.handoff_busy``.
    max_live_chats: int = 100
    #: Handoff starts per conversation per minute (0: no limit); beyond it ``messages.handoff_rate_limited``.
    handoff_starts_per_minute: int = 3
    #: Handoff starts per minute in the deployment, on average (0: no limit), and at once; beyond, ``messages.handoff_busy``.
    deployment_handoff_starts_per_minute: int = 60
    deployment_handoff_start_burst: int = 20
    #: Key that verifies the users' JWTs (HS* secret or RS*/ES* public key); unset: no authentication.
    jwt_key: Optional[str] = field(default=None, repr=False)
    jwt_method: str = DEFAULT_JWT_METHOD
    #: Seconds a token may live from its ``iat`` (or from now); every token needs an ``exp``.
    jwt_max_lifetime: float = DEFAULT_MAX_TOKEN_LIFETIME_S
    #: Take ``userId``, ``emailId`` and ``userName`` from webhook metadata (only for a frontend that authenticates users itself).
    trust_frontend_metadata: bool = False
    # -- attachments (connectors/servicenow/attachments.py) -------------------
    #: MIME types a user may send to the agent (``image/*`` allowed).
    attachment_types: Tuple[str, ...] = DEFAULT_ATTACHMENT_TYPES
    #: Largest file a user may send to the agent, in bytes.
    max_attachment_bytes: int = DEFAULT_MAX_ATTACHMENT_BYTES
    #: Hosts the user's file URLs may point at (``*.example.com`` allowed); empty: any.
    attachment_hosts: Tuple[str, ...] = ()
    # -- many replicas (docs/deployment.md) ----------------------------------
    #: ``redis://`` or ``rediss://`` URL of the Redis every replica shares; unset: one process, in-process state.
    redis_url: Optional[str] = field(default=None, repr=False)
    #: Prefix of every Redis key (and pub/sub channel) the connector uses.
    redis_prefix: str = DEFAULT_REDIS_PREFIX

    @property
    def uses_oauth(self) -> bool:
        return bool(self.client_id)

    @property
    def attachment_policy(self) -> AttachmentPolicy:
        return AttachmentPolicy(
            types=self.attachment_types,
            max_bytes=self.max_attachment_bytes,
            hosts=self.attachment_hosts,
            # The instance the channel talks to anyway (in `make run`, the emulator on loopback).
            trusted=frozenset({endpoint_of(self.instance_url)}),
            timeout=self.request_timeout,
        )

    @classmethod
    def from_credentials(cls, credentials: Mapping[str, Any]) -> "ServiceNowSettings":
        options = {key: value for key, value in credentials.items() if not _is_unset(value)}
        unknown = sorted(set(options) - set(_PARSERS))
        if unknown:
            raise ConfigurationError(
                f"Unknown option(s) for the ServiceNow channel: {', '.join(unknown)}. "
                f"Known options: {', '.join(sorted(_PARSERS))}."
            )
        values: Dict[str, Any] = {}
        retry: Dict[str, Any] = {}
        for name, raw in options.items():
            try:
                value = _PARSERS[name](raw)
            except (TypeError, ValueError) as error:
                raise ConfigurationError(f"Invalid value for '{name}': {error}") from None
            if name.startswith("retry_"):
                retry[_RETRY_FIELDS[name]] = value
            elif name == "messages":
                values["texts"] = value
            else:
                values[name] = value
        if retry:
            values["retry"] = RetryPolicy(**retry)
        if "instance_url" not in values:
            raise ConfigurationError(
                "The ServiceNow channel needs 'instance_url' (e.g. https://example.service-now.com)."
            )
        settings = cls(**values)
        settings._validate()
        return settings

    def _validate(self) -> None:
        if self.api not in SUPPORTED_APIS:
            raise ConfigurationError(
                f"'api: {self.api}' is not supported; use one of: {', '.join(SUPPORTED_APIS)}."
            )
        if self.api == CONNECT_API and not self.queue_id:
            raise ConfigurationError("'api: connect' needs 'queue_id' (the Connect support queue sys_id).")
        if self.client_id or self.client_secret:
            if not (self.client_id and self.client_secret):
                raise ConfigurationError("OAuth needs both 'client_id' and 'client_secret'.")
            if bool(self.username) != bool(self.password):
                raise ConfigurationError(
                    "With OAuth, give both 'username' and 'password' (password grant) or neither "
                    "(client credentials grant)."
                )
        elif not (self.username and self.password):
            raise ConfigurationError(
                "Give 'username' and 'password' (Basic auth) or 'client_id' and 'client_secret' (OAuth 2.0)."
            )
        if self.api == VIRTUAL_AGENT_API:
            if not (self.webhook_secret or (self.webhook_username and self.webhook_password)):
                raise ConfigurationError(
                    "'api: virtual_agent' needs the callback secured: set 'webhook_secret' (sent by ServiceNow "
                    "in a header) or 'webhook_username' and 'webhook_password' (Basic)."
                )
            if bool(self.webhook_username) != bool(self.webhook_password):
                raise ConfigurationError("Give both 'webhook_username' and 'webhook_password', or neither.")
        if self.idle_poll_interval < self.poll_interval:
            raise ConfigurationError("'idle_poll_interval' must not be shorter than 'poll_interval'.")


def _is_unset(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _text(value: Any) -> str:
    if not isinstance(value, (str, int)):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return str(value).strip()


def _url(value: Any) -> str:
    url = _text(value).rstrip("/")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"'{url}' is not an http(s) URL")
    return url


def _positive_number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    number = float(value)
    if number <= 0:
        raise ValueError("must be greater than 0")
    return number


def _non_negative_number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    number = float(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or float(value) != int(float(value)):
        raise ValueError("expected a whole number")
    number = int(float(value))
    if number < 1:
        raise ValueError("must be at least 1")
    return number


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = _text(value).lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ValueError(f"expected true or false, got '{value}'")


def _header_name(value: Any) -> str:
    name = _text(value)
    if not name or any(char in name for char in " :\r\n"):
        raise ValueError(f"'{name}' is not an HTTP header name")
    return name


def _mapping(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError("expected a mapping")
    return dict(value)


def _non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or float(value) != int(float(value)) or int(float(value)) < 0:
        raise ValueError("expected a whole number, 0 or more")
    return int(float(value))


def _jwt_method(value: Any) -> str:
    method = _text(value)
    if method not in JWT_METHODS:
        raise ValueError(f"'{method}' is not one of {', '.join(JWT_METHODS)}")
    return method


def _callback_secret(value: Any) -> str:
    secret = _text(value)
    secret_key(secret)  # ValueError, without the value, when it is not one
    return secret


def _redis_url(value: Any) -> str:
    url = _text(value)
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
        # The URL may carry a password: never echo it.
        raise ValueError("expected redis://host:port/db or rediss://host:port/db")
    return url


def _redis_prefix(value: Any) -> str:
    prefix = _text(value)
    if not prefix or any(char.isspace() for char in prefix):
        raise ValueError("expected a non-empty prefix without spaces, e.g. 'snow:'")
    return prefix


def _order_wait(value: Any) -> float:
    seconds = _non_negative_number(value)
    # ServiceNow gives up on a push after 5 s; a push held longer would count as failed there.
    if seconds > MAX_ORDER_WAIT_S:
        raise ValueError(f"must be at most {MAX_ORDER_WAIT_S:g} seconds (ServiceNow waits 5 s for a push's answer)")
    return seconds


def _api(value: Any) -> str:
    return _text(value).lower()


def _log_format(value: Any) -> str:
    choice = _text(value).lower()
    if choice not in ("text", "json"):
        raise ValueError(f"expected text or json, got '{choice}'")
    return choice


def _port(value: Any) -> int:
    if isinstance(value, bool) or float(value) != int(float(value)) or not 0 <= int(float(value)) <= 65535:
        raise ValueError("expected a port number, 1 to 65535 (0: none)")
    return int(float(value))


def _host(value: Any) -> str:
    host = _text(value)
    if not host or any(char.isspace() or char == "/" for char in host):
        raise ValueError(f"'{host}' is not a host name or address")
    return host


def _intent_name(value: Any) -> str:
    name = _text(value)
    # Rasa reads "/name{...}" as an intent with entities: braces, a leading
    # slash or spaces would not name one intent.
    if not name or name.startswith("/") or any(char.isspace() or char in "{}" for char in name):
        raise ValueError(f"'{name}' is not an intent name")
    return name


def _commands(value: Any) -> Tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ValueError("expected a list of commands")
    commands = tuple(_text(item).lower() for item in items if _text(item))
    if not commands:
        raise ValueError("needs at least one command")
    return commands


_PARSERS: Dict[str, Callable[[Any], Any]] = {
    "instance_url": _url,
    "api": _api,
    "username": _text,
    "password": _text,
    "client_id": _text,
    "client_secret": _text,
    "queue_id": _text,
    "callback_url": _url,
    "callback_secret": _callback_secret,
    "poll_interval": _positive_number,
    "idle_poll_interval": _positive_number,
    "idle_after": _non_negative_number,
    "session_check_interval": _positive_number,
    "request_timeout": _positive_number,
    "retry_attempts": _positive_int,
    "retry_backoff": _non_negative_number,
    "retry_max_backoff": _non_negative_number,
    "retry_after_limit": _non_negative_number,
    "max_connections": _positive_int,
    "verify_tls": _boolean,
    "end_chat_commands": _commands,
    "max_message_length": _positive_int,
    "messages": UserTexts.from_options,
    "chat_page": _boolean,
    "record_transcript": _boolean,
    "record_user_messages": _boolean,
    "handback_intent": _intent_name,
    "freeze_gc_at_start": _boolean,
    "cache_event_classes": _boolean,
    "log_format": _log_format,
    "metrics": _boolean,
    "metrics_port": _port,
    "metrics_host": _host,
    "webhook_secret": _text,
    "webhook_secret_header": _header_name,
    "webhook_username": _text,
    "webhook_password": _text,
    "message_token": _text,
    "message_hash_secret": _text,
    "context_variables": _mapping,
    "language": _text,
    "app_inbound_id": _text,
    "history_turns": _non_negative_int,
    "report_delivery": _boolean,
    "reconcile": _boolean,
    "reconcile_interval": _positive_number,
    "order_wait": _order_wait,
    "max_streams_per_sender": _positive_int,
    "max_streams_per_client": _positive_int,
    "max_open_streams": _positive_int,
    "body_read_timeout": _positive_number,
    "max_body_reads": _positive_int,
    "max_live_chats": _non_negative_int,
    "handoff_starts_per_minute": _non_negative_int,
    "deployment_handoff_starts_per_minute": _non_negative_int,
    "deployment_handoff_start_burst": _positive_int,
    "jwt_key": _text,
    "jwt_method": _jwt_method,
    "jwt_max_lifetime": _positive_number,
    "trust_frontend_metadata": _boolean,
    "redis_url": _redis_url,
    "agent_wait_timeout": _non_negative_number,
    "waiting_notice_interval": _non_negative_number,
    "user_idle_timeout": _non_negative_number,
    "business_hours": BusinessHours.from_options,
    "check_queue_availability": _boolean,
    "redis_prefix": _redis_prefix,
    "attachment_types": parse_types,
    "max_attachment_bytes": _positive_int,
    "attachment_hosts": parse_hosts,
}

_RETRY_FIELDS = {
    "retry_attempts": "attempts",
    "retry_backoff": "backoff",
    "retry_max_backoff": "max_backoff",
    "retry_after_limit": "max_retry_after",
}


# -- the socket.io door (socketio_channel.py, docs/socketio.md) ---------------

#: Events of the protocol itself; the configurable ones may not take these names.
RESERVED_EVENTS = frozenset(
    {"connect", "disconnect", "connect_error", "session_request", "session_confirm",
     "servicenow_handoff", "servicenow_typing", "servicenow_error", "servicenow_user_typing",
     "servicenow_refused_input"}
)
#: Rasa's socketio options and their defaults (rasa/core/channels/socketio.py).
SOCKETIO_DEFAULTS: Dict[str, Any] = {
    "user_message_evt": "user_uttered",
    "bot_message_evt": "bot_uttered",
    "namespace": None,
    "session_persistence": False,
    "socketio_path": "/socket.io",
    "metadata_key": "metadata",
}


@dataclass(frozen=True)
class SocketIOSettings:
    user_message_evt: str = "user_uttered"
    bot_message_evt: str = "bot_uttered"
    namespace: Optional[str] = None
    #: Sessions outlive sockets (``session_request``'s id is the conversation); needed for replay.
    session_persistence: bool = False
    socketio_path: str = "/socket.io"
    #: Key of the user event's metadata (rasa-webchat sends ``customData``).
    metadata_key: str = "metadata"

    @classmethod
    def from_credentials(cls, credentials: Mapping[str, Any]) -> "SocketIOSettings":
        values: Dict[str, Any] = {}
        for name, default in SOCKETIO_DEFAULTS.items():
            raw = credentials.get(name)
            if raw is None or (isinstance(raw, str) and not raw.strip()):
                values[name] = default
                continue
            if name == "session_persistence":
                values[name] = _socketio_boolean(name, raw)
            elif not isinstance(raw, str):
                raise ConfigurationError(f"Invalid value for '{name}': expected a string.")
            else:
                values[name] = raw.strip()
        settings = cls(**values)
        for name in ("user_message_evt", "bot_message_evt"):
            if getattr(settings, name) in RESERVED_EVENTS:
                raise ConfigurationError(f"'{name}: {getattr(settings, name)}' is an event of the protocol itself.")
        if settings.user_message_evt == settings.bot_message_evt:
            raise ConfigurationError("'user_message_evt' and 'bot_message_evt' must differ.")
        if not settings.socketio_path.startswith("/"):
            raise ConfigurationError(f"'socketio_path' must start with '/', e.g. /socket.io (got '{settings.socketio_path}').")
        if settings.namespace is not None and not settings.namespace.startswith("/"):
            raise ConfigurationError(f"'namespace' must start with '/' (got '{settings.namespace}').")
        return settings


def _socketio_boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ConfigurationError(f"Invalid value for '{name}': expected true or false.")
