"""The request pipeline every call goes through, outermost first:

1. ``request_log``: records the request for ``GET /__emu/requests`` and logs one line (credentials redacted; at DEBUG
   unless it failed or a fault answered it);
2. ``housekeeping``: lets idle Connect and VA sessions time out on the emulator clock;
3. ``faults``: applies injected fault rules (before anything else can have a side effect);
4. ``errors``: turns :class:`ApiError` and router misses into ServiceNow-shaped responses;
5. ``control_guard``: keeps the control plane to loopback clients, to this emulator's own names (``Host``) and origin
   (``Origin``), to JSON bodies, and, for browsers, to holders of the control token (see :func:`control_guard`);
6. ``auth``: Basic or Bearer on ``/api/**``;
7. ``rate_limit``: the optional per-user-per-hour rule;
8. ``strict_headers``: ``Accept``/``Content-Type`` checks on ``/api/**``.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import time
from typing import Any, Awaitable, Callable, Dict, Mapping, Optional
from urllib.parse import parse_qsl, urlsplit

from aiohttp import web

from . import connect, va
from .faults import RequestFacts, api_of, fault_response, pick_fault, rate_limit_body
from .oauth import authenticated_user
from .responses import NOT_AUTHENTICATED, ApiError, control_error, sn_error
from .state import STATE_KEY, RequestRecord

log = logging.getLogger("connectors.servicenow.emulator")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Finds the session a request of one API is about, from the request and its raw body.
SessionExtractor = Callable[[web.Request, bytes], Optional[str]]

CONTROL_PREFIX = "/__emu/"
API_PREFIX = "/api/"
ATTACHMENT_PREFIX = "/api/now/attachment/"
#: Sent by the agent console with its polling GETs (value ``poll``); they are logged at DEBUG, not INFO.
CONSOLE_POLL_HEADER = "X-Emulator-Console"
_SECRET_FORM_FIELDS = {"password", "client_secret", "refresh_token"}
#: Credentials in headers besides Authorization: the VA static token [V configure-send-request.md].
_SECRET_HEADERS = {"token"}
#: ... and in JSON bodies (the VA static token may travel in the body).
_SECRET_JSON_FIELDS = {"token"}
#: A status that is never sent: a dropped request's response is discarded with its closed connection.
_DROPPED_STATUS = 499
#: The request header that carries the control token.
TOKEN_HEADER = "X-Emulator-Token"
#: The per-run control token of an app (``create_app``).
TOKEN_KEY = web.AppKey("servicenow_emulator_control_token", str)
#: What the console page and its files are: loadable without the token (the page is how a browser gets it).
CONSOLE_PREFIX = "/__emu/console"
_BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")
#: The content types a page may POST cross-site without a CORS preflight (HTML forms, ``fetch`` "simple" requests).
_FORM_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data")


@web.middleware
async def request_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    started = time.perf_counter()
    raw = await request.read() if request.can_read_body else b""
    status: Optional[int] = None
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except Exception:
        status = 500
        raise
    finally:
        dropped = bool(request.get("dropped"))
        user = request.get("user")
        # Routine traffic (Connect polls every second per chat, the console twice a second, every answered call) is
        # DEBUG; what went wrong or was injected stays visible. The chats' progress is logged by connect.py and va.py.
        routine = status is not None and status < 400 and not dropped and not request.get("fault")
        level = logging.DEBUG if routine or request.headers.get(CONSOLE_POLL_HEADER) == "poll" else logging.INFO
        log.log(
            level,
            "%s %s -> %s%s%s",
            request.method,
            request.path_qs,
            "dropped" if dropped else status,
            f" user={user}" if user else "",
            " (fault)" if request.get("fault") else "",
        )
        if state.config.log_requests and not request.path.startswith(CONTROL_PREFIX):
            state.requests.append(
                RequestRecord(
                    at_ms=state.clock.now_ms(),
                    method=request.method,
                    path=request.path,
                    query=dict(request.query),
                    headers=_redacted_headers(request),
                    body=_decoded_body(request, raw),
                    user=user,
                    status=None if dropped else status,
                    fault=request.get("fault"),
                    dropped=dropped,
                    duration_ms=round((time.perf_counter() - started) * 1000, 1),
                )
            )


@web.middleware
async def housekeeping(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    connect.sweep_idle(state)
    va.sweep_idle(state)
    return await handler(request)


def faults(session_extractors: Mapping[str, SessionExtractor]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The fault middleware; ``session_extractors`` maps an API name to how its requests name a session."""

    @web.middleware
    async def fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        state = request.app[STATE_KEY]
        api = api_of(request.path)
        if api is None or not state.faults:
            return await handler(request)
        raw = await request.read()
        extractor = session_extractors.get(api)
        session = extractor(request, raw) if extractor else None
        facts = RequestFacts(api, request.method, request.path, session, raw.decode("utf-8", errors="replace"))
        rule = pick_fault(state.faults, facts, state.fault_seed)
        if rule is None:
            return await handler(request)
        request["fault"] = rule.id
        if rule.respond.delay_ms:
            await asyncio.sleep(rule.respond.delay_ms / 1000)
        if rule.respond.drop_connection:
            # Close the socket before any byte of a response is written: the client sees a disconnect. aiohttp then
            # fails to write the placeholder below to the closed transport and discards it quietly.
            request["dropped"] = True
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=_DROPPED_STATUS)
        if rule.respond.status is None:
            return await handler(request)
        return fault_response(rule, facts, state.clock.now_ms())

    return fault_middleware


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response
    except web.HTTPNotFound:
        # A miss of the router (handlers raise ApiError): ServiceNow answers 400 for a URI no API serves [V 4.1].
        if request.path.startswith(CONTROL_PREFIX):
            return control_error(404, f"no control-plane route {request.path}").response
        return sn_error(400, "Requested URI does not represent any resource", None).response
    except web.HTTPMethodNotAllowed as exc:
        if request.path.startswith(CONTROL_PREFIX):
            return control_error(405, f"{request.method} is not allowed on {request.path}").response
        return sn_error(405, "Method not Supported", f"Allowed: {', '.join(sorted(exc.allowed_methods))}").response


@web.middleware
async def control_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What a control-plane request must show, in this order (all refusals are JSON ``{"error"}``):

    1. a loopback client address (``control_plane_loopback_only``), 403;
    2. a ``Host`` this emulator answers to: an IP literal, ``localhost`` (or ``*.localhost``) or a name of
       ``control_plane_hosts``, with any port; any other name is a DNS-rebinding page's, 403;
    3. no ``Origin``, or this emulator's own origin (a cross-site page's requests carry theirs), 403;
    4. a JSON body: a body that is not ``application/json``, or a form content type (``text/plain``, urlencoded,
       multipart) even without a body, is 415, so a cross-site form never reaches a handler and a cross-site ``fetch``
       with JSON needs a CORS preflight, which the emulator never grants;
    5. the control token (header ``X-Emulator-Token``) from browsers: any request with ``Origin`` or ``Sec-Fetch-*``
       headers, except the console page and its files and an address the user typed (``Sec-Fetch-Site: none``,
       ``Sec-Fetch-Mode: navigate``); from every client with ``control_plane_require_token``. A token that is sent
       must be right, 403 otherwise.

    Non-browser clients on loopback (curl, the test harness) therefore need no token, only JSON: no browser page can
    send what they send. The settings this reads are fixed at start (``config.START_UP_ONLY``).
    """
    if not request.path.startswith(CONTROL_PREFIX):
        return await handler(request)
    config = request.app[STATE_KEY].config
    if config.control_plane_loopback_only and not _is_loopback(request.remote):
        raise control_error(403, "the control plane only answers loopback clients (control_plane_loopback_only)")
    host = request.headers.get("Host")
    if host is not None and not _known_host(host, config.control_plane_hosts):
        raise control_error(
            403, f"Host {host!r} is not a name of this emulator; add it to control_plane_hosts at start to allow it"
        )
    origin = request.headers.get("Origin")
    if origin is not None and not _same_origin(origin, request.scheme, host):
        raise control_error(403, f"cross-site request from {origin!r} refused")
    if request.method in _BODY_METHODS:
        raw = await request.read()
        content_type = request.headers.get("Content-Type", "").partition(";")[0].strip().lower()
        if content_type in _FORM_TYPES or (raw and content_type != "application/json"):
            raise control_error(
                415, "control-plane bodies are JSON: send 'Content-Type: application/json' (curl: --json '{...}')"
            )
    given = request.headers.get(TOKEN_HEADER)
    if given is not None:
        if not hmac.compare_digest(given.encode("utf-8"), request.app[TOKEN_KEY].encode("utf-8")):
            raise control_error(403, f"wrong {TOKEN_HEADER}")
    elif _needs_token(request, config.control_plane_require_token):
        raise control_error(
            403,
            f"this request needs the control token ({TOKEN_HEADER}); open the agent console from the link the "
            "emulator printed at start, or type its address in the address bar",
        )
    return await handler(request)


def _needs_token(request: web.Request, always: bool) -> bool:
    if request.path == CONSOLE_PREFIX or request.path.startswith(CONSOLE_PREFIX + "/"):
        return False
    if always:
        return True
    headers = request.headers
    from_browser = "Origin" in headers or any(name.lower().startswith("sec-fetch-") for name in headers)
    return from_browser and not user_navigation(request)


def user_navigation(request: web.Request) -> bool:
    """A page load the user started (address bar, bookmark): no other page can make a browser say so [Fetch
    Metadata: ``Sec-Fetch-Site: none``]."""
    headers = request.headers
    return (
        request.method in ("GET", "HEAD")
        and headers.get("Sec-Fetch-Site") == "none"
        and headers.get("Sec-Fetch-Mode") == "navigate"
        and "Origin" not in headers
    )


def _known_host(host: str, configured: Any) -> bool:
    """An IP literal (no DNS, so nothing to rebind), ``localhost`` and its subdomains, or a configured name."""
    name = _host_name(host)
    if name is None:
        return False
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    name = name.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost") or name in {h.lower().rstrip(".") for h in configured}


def _host_name(host: str) -> Optional[str]:
    """The name of a ``Host`` value without its port (``[::1]:8181`` gives ``::1``); ``None`` when malformed."""
    try:
        parsed = urlsplit(f"//{host}")
        parsed.port  # raises ValueError for a port that is not a number
    except ValueError:
        return None
    return parsed.hostname or None


def _same_origin(origin: str, scheme: str, host: Optional[str]) -> bool:
    if host is None or origin == "null":
        return False
    try:
        parsed = urlsplit(origin)
        own = urlsplit(f"{scheme}://{host}")
        return (
            parsed.scheme == own.scheme
            and (parsed.hostname or "") == (own.hostname or "")
            and (parsed.port or _default_port(parsed.scheme)) == (own.port or _default_port(own.scheme))
            and parsed.path in ("", "/")
        )
    except ValueError:
        return False


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(API_PREFIX):
        user = authenticated_user(request.app[STATE_KEY], request.headers.get("Authorization"))
        if user is None:
            raise sn_error(401, *NOT_AUTHENTICATED)
        request["user"] = user
    return await handler(request)


@web.middleware
async def rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count authenticated requests against the rate-limit rule; its headers go on every counted response [V 4.2]."""
    state = request.app[STATE_KEY]
    rule = state.rate_limit
    api = api_of(request.path)
    if rule is None or api is None or "user" not in request or not rule.applies_to(api):
        return await handler(request)
    now_ms = state.clock.now_ms()
    count = rule.count(request["user"], now_ms)
    headers = rule.headers()
    if count > rule.per_user_per_hour:
        headers["Retry-After"] = str(max(1, int(headers["X-RateLimit-Reset"]) - now_ms // 1000))
        return web.json_response(rate_limit_body(rule.per_user_per_hour, api), status=429, headers=headers)
    try:
        response = await handler(request)
    except ApiError as exc:
        response = exc.response
    response.headers.update(headers)
    return response


@web.middleware
async def strict_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``Accept: application/json`` on every /api call, ``Content-Type: application/json`` on POST/PUT; otherwise
    400 [V c_RESTAPI.md]."""
    # The Attachment API takes and serves files, not JSON [V: any Content-Type].
    if (
        request.path.startswith(API_PREFIX)
        and not request.path.startswith(ATTACHMENT_PREFIX)
        and request.app[STATE_KEY].config.strict_headers
    ):
        accepted = [part.split(";")[0].strip().lower() for part in request.headers.get("Accept", "").split(",")]
        if "application/json" not in accepted:
            raise sn_error(400, "Invalid Accept header", "Send 'Accept: application/json'")
        # Read from the raw header: aiohttp's request.content_type runs the email parser on every request.
        content_type = request.headers.get("Content-Type", "").partition(";")[0].strip().lower()
        if request.method in ("POST", "PUT") and content_type != "application/json":
            raise sn_error(400, "Invalid Content-Type header", "Send 'Content-Type: application/json'")
    return await handler(request)


def _is_loopback(remote: Optional[str]) -> bool:
    if remote is None:  # a Unix socket
        return True
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def _redacted_headers(request: web.Request) -> Dict[str, str]:
    headers = dict(request.headers)
    for name in list(headers):
        if name.lower() == "authorization":
            scheme = headers[name].partition(" ")[0]
            headers[name] = f"{scheme} [redacted]"
        elif name.lower() in _SECRET_HEADERS:
            headers[name] = "[redacted]"
    return headers


def _decoded_body(request: web.Request, raw: bytes) -> Any:
    """The body as JSON when it parses, as a dict for forms (secrets redacted), else as text; ``None`` when empty."""
    if not raw:
        return None
    if request.path.startswith(ATTACHMENT_PREFIX):
        return f"<{len(raw)} bytes of {request.content_type}>"
    text = raw.decode("utf-8", errors="replace")
    if request.content_type == "application/x-www-form-urlencoded":
        return {k: "[redacted]" if k in _SECRET_FORM_FIELDS else v for k, v in parse_qsl(text)}
    try:
        body = json.loads(text)
    except ValueError:
        return text
    if isinstance(body, dict):
        body = {k: "[redacted]" if k in _SECRET_JSON_FIELDS else v for k, v in body.items()}
    return body
