"""Fault injection (reference section 5.5): rules that make chosen requests fail, stall or disconnect, and the
optional per-user-per-hour rate limit.

A fault rule is checked before the request reaches authentication or a route handler, the way a gateway in front of
the instance would reject it: a faulted request has no side effect on the emulator's state. A rule without a
``status`` (and without ``drop_connection``) only delays the request and then lets it through.

Rules with ``match.api: "callback"`` act on the other direction, the emulator's outbound Virtual Agent callbacks
(pushes; applied in ``callbacks.py``): ``status`` fails the attempt without sending it, ``drop_connection`` loses it,
``delay_ms`` holds that one callback back, ``hold`` sends the conversation's next push first and ``duplicate`` sends
it twice. A rule without ``api`` matches inbound requests of every API but never a callback, so an inbound fault
cannot eat a callback by accident. ``{"push": "drop" | "fail" | "duplicate" | "hold" | "delay", ...}`` is a shorthand
for such a rule (see :func:`parse_rule`).

Probability draws are seeded for replay: the n-th request (or push) a rule sees draws from a generator seeded with
``(seed, the rule's place in the list, n)``, so the same seed gives the same decisions for the same sequence of
matching requests whatever else runs meanwhile. The seed is ``random_seed``, or one the emulator picks at start and
shows in ``GET /__emu/faults``.

This module is pure logic (parsing, matching, building responses); the middleware that applies it lives in
``middleware.py``.
"""

from __future__ import annotations

import random
import re
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Dict, Iterable, List, Mapping, Optional, Pattern, Union

from aiohttp import web
from multidict import CIMultiDict

from .responses import NO_RECORD, NOT_AUTHENTICATED, envelope

#: Which API a rule targets. ``callback`` is the emulator's outbound webhook delivery (Virtual Agent style).
APIS = ("connect", "va", "oauth", "table", "attachment", "callback")
RATE_LIMIT_SCOPES = ("connect", "va", "table", "all")
#: What the ``push`` shorthand of a rule stands for (``respond`` of a ``match.api: "callback"`` rule).
PUSH_FAULTS = ("drop", "fail", "duplicate", "hold", "delay")
#: How long a ``hold`` waits for the conversation's next push before it sends the held one anyway.
DEFAULT_HOLD_MS = 10_000
#: sys_id reported in ``X-RateLimit-Rule`` (a ``sys_rate_limit_rules`` record on a real instance) [V 4.2].
RATE_LIMIT_RULE_SYS_ID = "7c0e5b2d4a9f4e1b8d6c3a2f1e0d9c8b"
#: Per-hour limit reported by injected 429s unless the rule's headers say otherwise (the doc's example value) [V].
DEFAULT_FAULT_LIMIT = 100
#: REST API names used in the 429 detail text ("Rate limit of 100 requests per hour for Table API exceeded") [I].
API_NAMES = {
    "connect": "Connect Support API",
    "va": "VA Bot Integration API",
    "oauth": "OAuth API",
    "table": "Table API",
    "attachment": "Attachment API",
}
_TABLE_PATH = re.compile(r"^/api/now/(?:v[0-9]+/)?table/")


def api_of(path: str) -> Optional[str]:
    """Which emulated API an inbound path belongs to; ``None`` for the control plane and unknown paths."""
    if path == "/oauth_token.do":
        return "oauth"
    if path.startswith("/api/now/connect/"):
        return "connect"
    if path.startswith("/api/sn_va_as_service/"):
        return "va"
    if _TABLE_PATH.match(path):
        return "table"
    if path.startswith("/api/now/attachment/") or path == "/sys_attachment.do":
        return "attachment"
    return None


@dataclass
class RequestFacts:
    """What a fault rule can match on."""

    api: str
    method: str
    path: str
    #: Connect ``group`` or VA ``clientSessionId`` the request (or callback) is about, if any.
    session: Optional[str] = None
    #: The raw body as text (inbound) or the serialized callback JSON, for ``body_regex``.
    body: str = ""


@dataclass
class FaultMatch:
    api: Optional[str] = None
    method: Optional[str] = None
    path_regex: Optional[Pattern[str]] = None
    #: ``None`` (or ``"*"`` on the wire) matches any request, with or without a session.
    session: Optional[str] = None
    #: Searched in the request body text, or in the serialized JSON of a callback.
    body_regex: Optional[Pattern[str]] = None

    def matches(self, facts: RequestFacts) -> bool:
        if facts.api == "callback" and self.api != "callback":
            return False  # callbacks are only faulted on purpose (see the module docstring)
        return (
            (self.api is None or self.api == facts.api)
            and (self.method is None or self.method == facts.method)
            and (self.path_regex is None or self.path_regex.search(facts.path) is not None)
            and (self.session is None or self.session == facts.session)
            and (self.body_regex is None or self.body_regex.search(facts.body) is not None)
        )


@dataclass
class FaultResponse:
    #: ``None``: no error, the request only gets ``delay_ms`` and then proceeds.
    status: Optional[int] = None
    headers: Dict[str, str] = field(default_factory=dict)
    #: ``None``: the built-in body for ``status``.
    body: Any = None
    delay_ms: int = 0
    drop_connection: bool = False
    #: Callbacks only: deliver the callback twice (same payload), as a retry after a lost answer would.
    duplicate: bool = False
    #: Callbacks only: hold this push until the conversation's next push has been sent (or ``delay_ms``, by default
    #: :data:`DEFAULT_HOLD_MS`, has passed), so the two arrive in swapped order.
    hold: bool = False


@dataclass
class FaultRule:
    id: str
    match: FaultMatch
    respond: FaultResponse
    #: How many times the rule fires; ``None`` means without limit.
    times: Optional[int] = 1
    probability: float = 1.0
    fired: int = 0
    #: The rule's place in the list when it was added; part of its draws' seed.
    ordinal: int = 0
    #: Matching requests seen so far (fired or not); numbers the draws.
    seen: int = 0

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.fired >= self.times

    def to_dict(self) -> Dict[str, Any]:
        return {
            "id": self.id,
            "match": {
                "api": self.match.api,
                "method": self.match.method,
                "path_regex": self.match.path_regex.pattern if self.match.path_regex else None,
                "session": self.match.session or "*",
                "body_regex": self.match.body_regex.pattern if self.match.body_regex else None,
            },
            "respond": {
                "status": self.respond.status,
                "headers": self.respond.headers,
                "body": self.respond.body,
                "delay_ms": self.respond.delay_ms,
                "drop_connection": self.respond.drop_connection,
                "duplicate": self.respond.duplicate,
                "hold": self.respond.hold,
            },
            "times": self.times,
            "probability": self.probability,
            "fired": self.fired,
        }


@dataclass
class RateLimitRule:
    """ServiceNow-style rate limit: at most ``per_user_per_hour`` requests per user per clock hour [V 4.2]."""

    per_user_per_hour: int
    scope: str = "all"
    counts: Dict[str, int] = field(default_factory=dict)
    window_start_s: int = 0

    def applies_to(self, api: str) -> bool:
        return api != "oauth" and (self.scope == "all" or self.scope == api)

    def count(self, user: str, now_ms: int) -> int:
        """Count one request of ``user`` and return the count in the current window."""
        window = now_ms // 1000 // 3600 * 3600
        if window != self.window_start_s:
            self.window_start_s, self.counts = window, {}
        self.counts[user] = self.counts.get(user, 0) + 1
        return self.counts[user]

    def headers(self) -> Dict[str, str]:
        """``X-RateLimit-*`` for the current window [V 4.2]."""
        reset_s = self.window_start_s + 3600
        return {
            "X-RateLimit-Limit": str(self.per_user_per_hour),
            "X-RateLimit-Reset": str(reset_s),
            "X-RateLimit-Rule": RATE_LIMIT_RULE_SYS_ID,
        }

    def to_dict(self) -> Dict[str, Any]:
        return {"per_user_per_hour": self.per_user_per_hour, "scope": self.scope}


def parse_rules(data: Union[Mapping[str, Any], Iterable[Mapping[str, Any]]]) -> List[Union[FaultRule, RateLimitRule]]:
    """Parse one rule or a list of rules from the wire; raises ``ValueError`` with a readable reason."""
    items = [data] if isinstance(data, Mapping) else list(data)
    return [parse_rule(item) for item in items]


def parse_rule(data: Mapping[str, Any]) -> Union[FaultRule, RateLimitRule]:
    if not isinstance(data, Mapping):
        raise ValueError("a fault rule must be a JSON object")
    if "per_user_per_hour" in data:
        return _parse_rate_limit(data)
    if "push" in data:
        return parse_rule(_push_rule(data))
    _only(data, {"match", "respond", "times", "probability"}, "rule")
    match = data.get("match") or {}
    respond = data.get("respond") or {}
    _only(match, {"api", "method", "path_regex", "session", "body_regex"}, "match")
    _only(respond, {"status", "headers", "body", "delay_ms", "drop_connection", "duplicate", "hold"}, "respond")

    api = match.get("api")
    if api is not None and api not in APIS:
        raise ValueError(f"match.api must be one of {APIS}")
    path_regex = _regex(match, "path_regex")
    body_regex = _regex(match, "body_regex")
    session = match.get("session")

    status = respond.get("status")
    if status is not None and (not isinstance(status, int) or not 100 <= status <= 599):
        raise ValueError("respond.status must be an HTTP status code")
    headers = respond.get("headers") or {}
    if not isinstance(headers, Mapping):
        raise ValueError("respond.headers must be an object")
    delay_ms = respond.get("delay_ms", 0) or 0
    if not isinstance(delay_ms, (int, float)) or delay_ms < 0:
        raise ValueError("respond.delay_ms must be a non-negative number")

    times = data.get("times", 1)
    if times is not None and (not isinstance(times, int) or times < 1):
        raise ValueError("times must be a positive integer or null (no limit)")
    probability = data.get("probability", 1.0)
    if isinstance(probability, bool) or not isinstance(probability, (int, float)) or not 0.0 <= probability <= 1.0:
        raise ValueError("probability must be between 0 and 1")
    for flag in ("drop_connection", "duplicate", "hold"):
        if not isinstance(respond.get(flag, False), bool):
            raise ValueError(f"respond.{flag} must be true or false")
    if respond.get("hold") and api != "callback":
        raise ValueError('respond.hold applies to pushes only (match.api "callback")')

    return FaultRule(
        id=uuid.uuid4().hex,
        match=FaultMatch(
            api=api,
            method=match["method"].upper() if match.get("method") else None,
            path_regex=path_regex,
            session=None if session in (None, "*") else str(session),
            body_regex=body_regex,
        ),
        respond=FaultResponse(
            status=status,
            headers={str(k): str(v) for k, v in headers.items()},
            body=respond.get("body"),
            delay_ms=int(delay_ms),
            drop_connection=bool(respond.get("drop_connection", False)),
            duplicate=bool(respond.get("duplicate", False)),
            hold=bool(respond.get("hold", False)),
        ),
        times=times,
        probability=float(probability),
    )


def _push_rule(data: Mapping[str, Any]) -> Dict[str, Any]:
    """The shorthand for a push fault, as a full rule::

        {"push": "drop"}                        lose the next push (with va_callback_retries 0: for good)
        {"push": "fail", "status": 503}         count the next attempt as failed (retried like any failure)
        {"push": "duplicate"}                   send the next push twice
        {"push": "hold"}                        send the conversation's next push first, then this one
        {"push": "delay", "delay_ms": 3000}     send the next push 3 s late (later pushes overtake it)

    plus optional ``session`` (a clientSessionId), ``times`` (1; null: every push) and ``probability`` (1.0).
    """
    _only(data, {"push", "session", "times", "probability", "delay_ms", "status"}, "push rule")
    kind = data["push"]
    if kind not in PUSH_FAULTS:
        raise ValueError(f"push must be one of {PUSH_FAULTS}")
    respond: Dict[str, Any] = {
        "drop": {"drop_connection": True},
        "fail": {"status": data.get("status", 503)},
        "duplicate": {"duplicate": True},
        "hold": {"hold": True},
        "delay": {"delay_ms": data.get("delay_ms", 1000)},
    }[kind]
    if kind == "hold" and "delay_ms" in data:
        respond["delay_ms"] = data["delay_ms"]
    rule: Dict[str, Any] = {"match": {"api": "callback"}, "respond": respond}
    if data.get("session") is not None:
        rule["match"]["session"] = data["session"]
    for key in ("times", "probability"):
        if key in data:
            rule[key] = data[key]
    return rule


def _parse_rate_limit(data: Mapping[str, Any]) -> RateLimitRule:
    _only(data, {"per_user_per_hour", "scope"}, "rate-limit rule")
    limit = data["per_user_per_hour"]
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ValueError("per_user_per_hour must be a non-negative integer")
    scope = data.get("scope", "all")
    if scope not in RATE_LIMIT_SCOPES:
        raise ValueError(f"scope must be one of {RATE_LIMIT_SCOPES}")
    return RateLimitRule(per_user_per_hour=limit, scope=scope)


def _regex(match: Mapping[str, Any], key: str) -> Optional[Pattern[str]]:
    if not match.get(key):
        return None
    try:
        return re.compile(match[key])
    except (re.error, TypeError) as exc:
        raise ValueError(f"match.{key}: {exc}") from exc


def _only(data: Any, allowed: set, what: str) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} must be an object")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"unknown {what} field(s): {', '.join(unknown)}")


def pick_fault(rules: List[FaultRule], facts: RequestFacts, seed: int) -> Optional[FaultRule]:
    """The first live rule that matches ``facts`` and wins its probability draw; counts it as fired."""
    for rule in rules:
        if rule.exhausted or not rule.match.matches(facts):
            continue
        draw = rule.seen
        rule.seen += 1
        if rule.probability < 1.0 and _draw(seed, rule.ordinal, draw) >= rule.probability:
            continue
        rule.fired += 1
        return rule
    return None


def _draw(seed: int, ordinal: int, draw: int) -> float:
    """The ``draw``-th number in [0, 1) of the rule at ``ordinal``: depends on nothing else, so a replay with the same
    seed makes the same decisions even when other rules' requests interleave differently."""
    return random.Random(f"{seed}:{ordinal}:{draw}").random()


def fault_response(rule: FaultRule, facts: RequestFacts, now_ms: int) -> web.Response:
    """The response for a status fault: the rule's headers and body over the built-ins for that status."""
    status = rule.respond.status
    assert status is not None
    headers = CIMultiDict(_builtin_headers(status, rule.respond.headers, now_ms))
    for name, value in rule.respond.headers.items():
        headers[name] = value
    body = rule.respond.body
    if body is None:
        body = builtin_body(status, facts.api, limit=headers.get("X-RateLimit-Limit", str(DEFAULT_FAULT_LIMIT)))
    if isinstance(body, str):
        content_type = headers.pop("Content-Type", "text/plain")
        return web.Response(status=status, text=body, content_type=content_type, headers=headers)
    return web.json_response(body, status=status, headers=headers)


def builtin_body(status: int, api: str, limit: str = str(DEFAULT_FAULT_LIMIT)) -> Any:
    """Default error body per status (reference 5.5)."""
    if status == 401:
        if api == "oauth":
            return {"error": "access_denied", "error_description": "Injected fault"}
        return envelope(*NOT_AUTHENTICATED)
    if status == 403 and api == "connect":
        return {"result": "You are not permitted to perform this action"}
    if status == 404:
        return envelope(*NO_RECORD)
    if status == 429:
        return rate_limit_body(limit, api)
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return envelope(phrase, "Injected fault")


def rate_limit_body(limit: Union[int, str], api: str) -> Dict[str, Any]:
    """The 429 body of ``rate-limit.md`` [V]."""
    return envelope(
        "Rate limit exceeded",
        f"Rate limit of {limit} requests per hour for {API_NAMES.get(api, 'REST API')} exceeded",
    )


def _builtin_headers(status: int, overrides: Mapping[str, str], now_ms: int) -> Dict[str, str]:
    """429s carry ``Retry-After`` and the ``X-RateLimit-*`` headers [V 4.2]; the reset time follows Retry-After."""
    if status != 429:
        return {}
    retry_after = next((v for k, v in overrides.items() if k.lower() == "retry-after"), "1")
    seconds = int(retry_after) if retry_after.isdigit() else 1
    return {
        "Retry-After": retry_after,
        "X-RateLimit-Limit": str(DEFAULT_FAULT_LIMIT),
        "X-RateLimit-Reset": str(now_ms // 1000 + seconds),
        "X-RateLimit-Rule": RATE_LIMIT_RULE_SYS_ID,
    }
