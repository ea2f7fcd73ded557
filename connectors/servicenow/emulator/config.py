"""Emulator configuration (reference section 5.1: Connect Support, OAuth and the Virtual Agent API).

A config is a plain dataclass. It can be built in code, loaded from a JSON file, overridden with ``key=value`` pairs
(values are JSON) and patched at runtime through ``POST /__emu/config``. Unknown keys and wrongly typed values are
rejected, so a typo in a test's config fails loudly instead of silently running with the default.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

from .faults import parse_rules

#: sys_id of the default Connect Support queue "IT Support". Fixed so that a connector's config can name it.
DEFAULT_QUEUE_SYS_ID = "3f5a6a4c9b1e4d2f8c7e6b5a4d3c2b1a"
#: The integration account a connector authenticates as; it is the Connect requester of every chat [I 1.1].
DEFAULT_USER = "rasa.integration"
DEFAULT_PASSWORD = "secret"
DEFAULT_CLIENT_ID = "rasa-connector"
DEFAULT_CLIENT_SECRET = "rasa-connector-secret"
#: The agent who accepts chats when a test does not name one (the ServiceNow demo-data agent).
DEFAULT_AGENT = "beth.anglin"
#: Queue greeting posted by the agent on accept. The text is ServiceNow's Agent Chat default [V async-chat.md, with
#: "now" as in Kore's Connect variant]; real instances configure it per queue, so connectors must not rely on it.
DEFAULT_GREETING = (
    "Thank you for contacting support. I am looking into your question now and will be with you shortly."
)

OAUTH_GRANTS = ("password", "client_credentials", "refresh_token")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")

#: Texts that escalate a Virtual Agent conversation to a live agent like ``action: "AGENT"`` does: the utterance and the
#: Picker choice of the ``bot-api.md`` example [V], plus "live agent" [I]. Compared case-insensitively, trimmed.
#: What the emulated instance takes as attachments [I: ServiceNow's list is instance configuration].
DEFAULT_ATTACHMENT_TYPES = (
    "image/*",
    "application/pdf",
    "text/plain",
    "text/csv",
    "application/msword",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.ms-excel",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
)
DEFAULT_ESCALATION_TEXTS = ("agent", "live agent", "Live Agent Support.")
#: The tables the Table API serves (table.py); by default the integration user may read them all.
TABLE_NAMES = ("sys_cs_conversation", "interaction", "sys_cs_message", "sys_user", "sys_cs_provider_application")
#: Settings that guard the control plane: fixed at start, so no control-plane request can loosen them.
START_UP_ONLY = ("control_plane_loopback_only", "control_plane_hosts", "control_plane_require_token")
VA_BATCHING = ("separate", "batched")
VA_VALIDATION = ("strict", "lenient")
CLOSE_STYLES = ("switch", "completed")
#: ServiceNow's outbound REST step takes at most 10 extra headers ("Attributes") [V configure-response-endpoint-auth].
MAX_CALLBACK_HEADERS = 10


def _default_basic_users() -> Dict[str, str]:
    return {DEFAULT_USER: DEFAULT_PASSWORD}


def _default_oauth_clients() -> Dict[str, Dict[str, Any]]:
    # "user" is the OAuth Application User the client_credentials grant acts as [V client-credentials.md].
    return {
        DEFAULT_CLIENT_ID: {
            "secret": DEFAULT_CLIENT_SECRET,
            "grants": list(OAUTH_GRANTS),
            "user": DEFAULT_USER,
        }
    }


def _default_queues() -> Dict[str, Dict[str, Any]]:
    return {DEFAULT_QUEUE_SYS_ID: {"name": "IT Support", "agents": [DEFAULT_AGENT]}}


@dataclass
class EmulatorConfig:
    """Everything that shapes the emulator's behaviour. See the package docstring for a table of the keys."""

    #: Basic-auth accounts (user name to password); also the accounts the OAuth password grant accepts.
    basic_users: Dict[str, str] = field(default_factory=_default_basic_users)
    #: client_id to ``{"secret": str, "grants": [..], "user": str}``; ``user`` is needed for client_credentials.
    oauth_clients: Dict[str, Dict[str, Any]] = field(default_factory=_default_oauth_clients)
    #: Access-token lifetime in seconds [V oauth-example.md: 1799].
    token_ttl_s: int = 1799
    #: queue sys_id to ``{"name": str, "agents": [user_name], "question"?: str, "not_available"?: bool | reason,
    #: "average_wait_time"?: seconds}``.
    connect_queues: Dict[str, Dict[str, Any]] = field(default_factory=_default_queues)
    #: Messages per ``GET .../messages`` page; the real value is unknown [I 1.5].
    connect_page_size: int = 25
    #: Posted by the agent when a chat is accepted; ``None`` disables it.
    greeting_text: Optional[str] = DEFAULT_GREETING
    #: Post the system message "<Agent> has joined the support session" on accept (no source gives this text [I]).
    join_message: bool = False
    #: Waiting or live sessions without activity for this long are abandoned (state 8) [V 3600 s B2B default].
    idle_timeout_s: float = 3600
    #: Require ``Accept: application/json`` and, on POST/PUT, ``Content-Type: application/json`` on /api [V c_RESTAPI].
    strict_headers: bool = True
    #: Keep a log of inbound /api and OAuth requests for ``GET /__emu/requests``.
    log_requests: bool = True
    #: Oldest entries of the request log are dropped beyond this many.
    request_log_limit: int = 1000
    #: Seed for fault-rule ``probability`` draws; ``None`` seeds from the OS.
    random_seed: Optional[int] = None
    #: Refuse control-plane calls that do not come from a loopback address (spec 5.5: "loopback only"). Start-up only.
    control_plane_loopback_only: bool = True
    #: Host names (besides loopback names and IP literals) the control plane answers to: the names a container or a
    #: proxy reaches the emulator by. Any other ``Host`` is refused (DNS rebinding). Start-up only.
    control_plane_hosts: List[str] = field(default_factory=list)
    #: Every control-plane call needs the control token, not only those a browser makes. Start-up only.
    control_plane_require_token: bool = False
    #: Fault rules in force from the start and after every reset (the bodies ``POST /__emu/faults`` takes);
    #: setting it at runtime replaces the rules.
    faults: List[Dict[str, Any]] = field(default_factory=list)

    # Virtual Agent Bot Integration API (reference 5.4) --------------------------------------------------------------
    #: The connector's webhook that receives the VA callbacks (may carry ``?secret=``); ``None``: callbacks are only
    #: logged (``GET /__emu/callbacks``), never sent.
    va_callback_url: Optional[str] = None
    #: ``"none"``, ``"basic:user:pass"``, ``"bearer:<token>"`` or an object of up to 10 extra static headers, as the
    #: outbound REST step offers (Basic/OAuth profile or "Attributes") [V].
    va_callback_auth: Union[str, Dict[str, str]] = "none"
    #: Per-attempt timeout of a callback request; ServiceNow's "Connection timeout" default is 5000 ms [V].
    va_callback_timeout_ms: float = 5000
    #: Extra attempts after a failed or timed-out delivery, with the same payload. ServiceNow's policy is unknown [I].
    va_callback_retries: int = 0
    #: Wait before each retry.
    va_callback_retry_delay_ms: float = 1000
    #: If set, inbound VA calls must carry this static token (header ``token``, else body ``token``; header wins) [V].
    va_static_token: Optional[str] = None
    #: If set, inbound VA calls must carry ``x-b2b-signature`` = hex HMAC-SHA1 of the compact JSON body [V].
    va_hash_secret: Optional[str] = None
    #: A rejected static token or signature answers ``401`` (false) or, like the real instance whose worker thread
    #: checks tokens after answering, ``200 {"status": "success"}`` and then nothing at all (true) [V bot-api.md].
    va_silent_token_failure: bool = False
    #: ``"separate"``: one callback per body item; ``"batched"``: one callback per event with all its items [I].
    va_batching: str = "separate"
    #: ``"strict"`` (reference 5.4 rules) or ``"lenient"`` (only ``userId`` and ``message.text``, va-common-errors.md).
    va_validation: str = "strict"
    #: User texts that escalate to a live agent in state VA, like ``action: "AGENT"``.
    va_escalation_texts: List[str] = field(default_factory=lambda: list(DEFAULT_ESCALATION_TEXTS))
    #: Typing items named ``StartTypingIndicatorActionMsg``/``EndTypingIndicatorActionMsg`` (the va-whats-new.md table)
    #: instead of the short names of the wire examples and pypestream [V both].
    va_long_action_names: bool = False
    #: ``waitTime`` of the wait-time spinner sent when a chat is queued [V "8 Seconds"]; ``None`` leaves it out.
    va_wait_time: Optional[str] = "8 Seconds"
    #: How an agent's close reaches a VA connector: ``"switch"`` (System text + ``SwitchToVirtualAgent``) or
    #: ``"completed"`` (the same, with ``completed: true`` on the last callback) [I].
    close_style: str = "switch"
    #: Inbound Id to name of the ``sys_cs_provider_application`` records the Table API shows (what ``appInboundId``
    #: selects) [V table and field role, I that the column is ``inbound_id``]. Inbound calls accept any id regardless.
    va_provider_applications: Dict[str, str] = field(default_factory=dict)

    # Table API (table.py) ------------------------------------------------------------------------------------------
    #: Tables the integration user may read (its roles' read ACLs); a table left out answers 403 as on an instance
    #: without the role [I: sys_cs_message/sys_cs_conversation need e.g. virtual_agent_admin or interaction_agent].
    table_read_access: List[str] = field(default_factory=lambda: list(TABLE_NAMES))
    #: Like ``glide.invalid_query.returns_no_rows``: a query with an invalid part returns no rows instead of ignoring
    #: that part (the instance's default) [V c_TableAPI.md].
    table_invalid_query_returns_no_rows: bool = False

    # Attachments (files.py) -----------------------------------------------------------------------------------------
    #: MIME types the instance takes (``image/*`` allowed), like ``glide.attachment.extensions``; a Connect upload of
    #: another type is refused with 400, a VA ``message.attachment`` of another type is dropped without a word [I].
    attachment_types: List[str] = field(default_factory=lambda: list(DEFAULT_ATTACHMENT_TYPES))
    #: Largest upload in bytes (``com.glide.attachment.max_size``) [I default].
    max_attachment_bytes: int = 10 * 1024 * 1024

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EmulatorConfig":
        return cls().patched(data)

    @classmethod
    def from_json_file(cls, path: Union[str, Path]) -> "EmulatorConfig":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the config file must hold a JSON object")
        return cls.from_dict(data)

    def patched(self, changes: Mapping[str, Any]) -> "EmulatorConfig":
        """A copy with ``changes`` applied (whole values replaced, not merged); raises ``ValueError`` on bad input."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown config key(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **dict(changes))

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def parse_overrides(pairs: Iterable[str]) -> Dict[str, Any]:
    """Turn ``["key=value", ...]`` into a dict. Values are JSON; a value that is not valid JSON is taken as a string,
    so ``greeting_text=Hello`` works without shell-quoting the quotes."""
    result: Dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value, got {pair!r}")
        try:
            result[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            result[key.strip()] = raw
    return result


def _validate(config: EmulatorConfig) -> None:
    def number(name: str, minimum: float) -> None:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            raise ValueError(f"{name} must be a number >= {minimum}, got {value!r}")

    def flag(name: str) -> None:
        if not isinstance(getattr(config, name), bool):
            raise ValueError(f"{name} must be true or false")

    number("token_ttl_s", 1)
    number("connect_page_size", 1)
    number("idle_timeout_s", 0)
    number("request_log_limit", 0)
    number("va_callback_timeout_ms", 1)
    number("va_callback_retry_delay_ms", 0)
    if isinstance(config.va_callback_retries, bool) or not isinstance(config.va_callback_retries, int):
        raise ValueError("va_callback_retries must be an integer >= 0")
    number("va_callback_retries", 0)
    for name in (
        "join_message",
        "strict_headers",
        "log_requests",
        "control_plane_loopback_only",
        "va_silent_token_failure",
        "va_long_action_names",
        "control_plane_require_token",
        "table_invalid_query_returns_no_rows",
    ):
        flag(name)
    access = config.table_read_access
    if not isinstance(access, list) or not set(access) <= set(TABLE_NAMES) or not all(isinstance(t, str) for t in access):
        raise ValueError(f"table_read_access must be a list drawn from {TABLE_NAMES}")
    hosts = config.control_plane_hosts
    if not isinstance(hosts, list) or not all(isinstance(h, str) and h.strip() and "/" not in h for h in hosts):
        raise ValueError("control_plane_hosts must be a list of host names")
    if not isinstance(config.faults, list):
        raise ValueError("faults must be a list of fault rules")
    try:
        parse_rules(config.faults)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"faults: {exc}") from None
    choices_by_key = {"va_batching": VA_BATCHING, "va_validation": VA_VALIDATION, "close_style": CLOSE_STYLES}
    for name, choices in choices_by_key.items():
        if getattr(config, name) not in choices:
            raise ValueError(f"{name} must be one of {choices}")
    for name in ("va_static_token", "va_hash_secret"):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"{name} must be a non-empty string or null")
    if config.va_callback_url is not None and (
        not isinstance(config.va_callback_url, str) or not config.va_callback_url.startswith(("http://", "https://"))
    ):
        raise ValueError("va_callback_url must be an http:// or https:// URL or null")
    if config.va_wait_time is not None and (not isinstance(config.va_wait_time, str) or not config.va_wait_time.strip()):
        raise ValueError("va_wait_time must be a non-empty string such as \"8 Seconds\" or null")
    texts = config.va_escalation_texts
    if not isinstance(texts, list) or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError("va_escalation_texts must be a list of non-empty strings")
    callback_auth_headers(config.va_callback_auth)  # raises ValueError when malformed
    if config.greeting_text is not None and not isinstance(config.greeting_text, str):
        raise ValueError("greeting_text must be a string or null")
    if config.random_seed is not None and (
        isinstance(config.random_seed, bool) or not isinstance(config.random_seed, int)
    ):
        raise ValueError("random_seed must be an integer or null")
    if not _is_str_map(config.basic_users) or not all(isinstance(p, str) for p in config.basic_users.values()):
        raise ValueError("basic_users must map user names to passwords")
    _validate_clients(config.oauth_clients)
    _validate_queues(config.connect_queues)
    if not isinstance(config.attachment_types, list) or not all(
        isinstance(t, str) and t.count("/") == 1 for t in config.attachment_types
    ):
        raise ValueError("attachment_types must be a list of MIME types such as image/png or image/*")
    if isinstance(config.max_attachment_bytes, bool) or not isinstance(config.max_attachment_bytes, int) or config.max_attachment_bytes < 1:
        raise ValueError("max_attachment_bytes must be a positive integer")
    apps = config.va_provider_applications
    if not _is_str_map(apps) or not all(isinstance(name, str) for name in apps.values()):
        raise ValueError("va_provider_applications must map Inbound Ids to names")


def callback_auth_headers(auth: Any) -> Dict[str, str]:
    """The request headers ``va_callback_auth`` stands for; raises ``ValueError`` when it is malformed."""
    if isinstance(auth, dict):
        if len(auth) > MAX_CALLBACK_HEADERS:
            raise ValueError(f"va_callback_auth: at most {MAX_CALLBACK_HEADERS} extra headers")
        if not all(isinstance(k, str) and k and isinstance(v, str) for k, v in auth.items()):
            raise ValueError("va_callback_auth: extra headers must map names to string values")
        return dict(auth)
    if not isinstance(auth, str):
        raise ValueError('va_callback_auth must be "none", "basic:user:pass", "bearer:<token>" or a headers object')
    kind, _, rest = auth.partition(":")
    if auth == "none":
        return {}
    if kind == "basic" and ":" in rest:
        # rest is "user:pass" already; the password may itself contain ":".
        return {"Authorization": "Basic " + base64.b64encode(rest.encode("utf-8")).decode("ascii")}
    if kind == "bearer" and rest:
        return {"Authorization": f"Bearer {rest}"}
    raise ValueError('va_callback_auth must be "none", "basic:user:pass", "bearer:<token>" or a headers object')


def _is_str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) for k in value)


def _validate_clients(clients: Any) -> None:
    if not _is_str_map(clients):
        raise ValueError("oauth_clients must map client ids to client objects")
    for client_id, client in clients.items():
        if not isinstance(client, dict) or not isinstance(client.get("secret"), str):
            raise ValueError(f"oauth client {client_id!r} needs a string 'secret'")
        grants: List[Any] = client.get("grants", [])
        if not isinstance(grants, list) or not set(grants) <= set(OAUTH_GRANTS):
            raise ValueError(f"oauth client {client_id!r}: 'grants' must be a list drawn from {OAUTH_GRANTS}")
        if "user" in client and not isinstance(client["user"], str):
            raise ValueError(f"oauth client {client_id!r}: 'user' must be a user name")


def _validate_queues(queues: Any) -> None:
    if not _is_str_map(queues):
        raise ValueError("connect_queues must map queue sys_ids to queue objects")
    for sys_id, queue in queues.items():
        if not _HEX32.match(sys_id):
            raise ValueError(f"queue id {sys_id!r} is not a 32-character lowercase hex sys_id")
        if not isinstance(queue, dict) or not isinstance(queue.get("name"), str):
            raise ValueError(f"queue {sys_id}: needs a string 'name'")
        agents = queue.get("agents", [])
        if not isinstance(agents, list) or not all(isinstance(a, str) for a in agents):
            raise ValueError(f"queue {sys_id}: 'agents' must be a list of user names")
        if not isinstance(queue.get("not_available", False), (bool, str)):
            raise ValueError(f"queue {sys_id}: 'not_available' must be false, true or a reason text")
        average = queue.get("average_wait_time", 0)
        if isinstance(average, bool) or not isinstance(average, (int, float)) or average < 0:
            raise ValueError(f"queue {sys_id}: 'average_wait_time' must be a number of seconds, 0 or more")
