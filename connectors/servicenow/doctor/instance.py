"""Reach the instance with the channel's own HTTP client and credentials,
and ask the API the channel uses whether its routes (and the configured
queue or provider application) exist. Nothing is created: the probes read,
or send a Virtual Agent call that ServiceNow refuses for lack of a user."""

import dataclasses
import time
import uuid
import warnings
from datetime import datetime, timezone
from typing import Any, Dict, List, Mapping, Sequence

from connectors.servicenow.servicenow.http import ServiceNowHTTP, result_of
from connectors.servicenow.config import CONNECT_API, RetryPolicy, ServiceNowSettings
from connectors.servicenow.doctor.callback import check_callback
from connectors.servicenow.doctor.findings import Finding, Severity, ok, problem, warning
from connectors.servicenow.errors import AuthenticationFailed, ServiceNowRejected, ServiceNowUnavailable

TOPIC = "instance"
QUEUES_PATH = "/api/now/connect/support/queues"
PROVIDER_APPS_PATH = "/api/now/table/sys_cs_provider_application"
PROBE_TIMEOUT_S = 10.0
RATE_LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Reset", "X-RateLimit-Rule")
SECONDS_PER_HOUR = 3600.0


async def check_instance(settings: ServiceNowSettings, extra_queues: Sequence[str] = ()) -> List[Finding]:
    # One attempt, short timeout: the doctor reports a failing instance, it does not wait it out.
    probe = dataclasses.replace(
        settings,
        retry=RetryPolicy(attempts=1),
        request_timeout=min(settings.request_timeout, PROBE_TIMEOUT_S),
    )
    headers: Dict[str, str] = {}

    def remember_rate_limit(_method: str, _path: str, _status: int, response_headers: Mapping[str, str]) -> None:
        for name in RATE_LIMIT_HEADERS:
            if name in response_headers:
                headers[name] = response_headers[name]

    http = ServiceNowHTTP(probe, on_response=remember_rate_limit)
    try:
        if settings.api == CONNECT_API:
            found = await _check_connect(http, settings, extra_queues)
        else:
            found = await _check_virtual_agent(http, settings)
    finally:
        await http.aclose()
    # The first finding says whether the instance answered the probe at all.
    if found and found[0].severity is Severity.OK:
        found.append(_rate_limit(headers, settings))
        if settings.api != CONNECT_API:
            found += await check_callback(settings)
    return found


def _auth_name(settings: ServiceNowSettings) -> str:
    return "OAuth token" if settings.uses_oauth else "Basic credentials"


def _failure(error: Exception, settings: ServiceNowSettings, what: str) -> Finding:
    """What a failed probe means, from the connector's own error classes."""
    if isinstance(error, AuthenticationFailed):
        detail = f" ({error.detail})" if error.detail else ""
        fix = (
            "Check client_id/client_secret (and username/password for the password grant), and that the OAuth "
            "application is active." if settings.uses_oauth else "Check username and password of the integration user."
        )
        return problem(TOPIC, f"The instance refused the {_auth_name(settings)}: {error}{detail}.", fix)
    if isinstance(error, ServiceNowUnavailable):
        if error.status == 429:
            return problem(TOPIC, f"The instance is rate-limiting this user right now ({error}).",
                           "Wait for the limit window to reset, or ask for a higher rate limit (sys_rate_limit_rules).")
        return problem(TOPIC, f"Could not reach {settings.instance_url} ({error}).",
                       "Check instance_url, the network path and proxy; a developer instance may be hibernating.")
    assert isinstance(error, ServiceNowRejected)
    detail = f": {error.detail}" if error.detail else ""
    return problem(TOPIC, f"{what} answered HTTP {error.status}{detail}.")


def _no_such_route(error: ServiceNowRejected) -> bool:
    # ServiceNow answers 400 "Requested URI does not represent any resource"
    # for an /api path no installed API serves.
    return error.status == 404 or (error.status == 400 and "does not represent any resource" in error.detail.lower())


async def _timed(http: ServiceNowHTTP, method: str, path: str, **kwargs: Any) -> "tuple[Any, float]":
    started = time.monotonic()
    body = await http.request(method, path, **kwargs)
    return body, (time.monotonic() - started) * 1000


async def _check_connect(http: ServiceNowHTTP, settings: ServiceNowSettings, extra_queues: Sequence[str]) -> List[Finding]:
    try:
        body, elapsed_ms = await _timed(http, "GET", QUEUES_PATH)
        queues = result_of(body)
    except ServiceNowRejected as error:
        if _no_such_route(error):
            return [problem(TOPIC, f"GET {QUEUES_PATH} answered {error.status} ({error.detail or 'not found'}): "
                                   "Connect Support is not active on this instance.",
                            "Connect Support cannot be activated since Utah; use api: virtual_agent.")]
        if error.status == 403 and not isinstance(error, AuthenticationFailed):
            return [problem(TOPIC, f"The integration user may not use Connect Support (GET {QUEUES_PATH}: 403).",
                            "Give the user the roles Connect Support needs (docs/servicenow-setup.md).")]
        return [_failure(error, settings, f"GET {QUEUES_PATH}")]
    except ServiceNowUnavailable as error:
        return [_failure(error, settings, f"GET {QUEUES_PATH}")]
    found = [ok(TOPIC, f"Reached {settings.instance_url} with the {_auth_name(settings)} "
                       f"(Connect Support answered in {elapsed_ms:.0f} ms).")]
    visible = {str(queue.get("sys_id")): queue for queue in queues or [] if isinstance(queue, dict)}
    wanted = [settings.queue_id or ""] + [queue for queue in extra_queues if queue != settings.queue_id]
    for queue_id in wanted:
        source = "queue_id" if queue_id == settings.queue_id else "a handoff response's queue_id"
        queue = visible.get(queue_id)
        if queue is None:
            names = ", ".join(f"{q.get('name')} ({sys_id})" for sys_id, q in visible.items()) or "none"
            found.append(problem(TOPIC, f"Connect queue {queue_id} ({source}) is not among the queues the integration "
                                        f"user can see: {names}.",
                                 "Use the sys_id of a chat_queue record the user may join."))
            continue
        unavailable = queue.get("not_available")
        if unavailable:
            reason = unavailable if isinstance(unavailable, str) else "not available"
            found.append(warning(TOPIC, f"Connect queue '{queue.get('name')}' ({source}) exists but is {reason}: "
                                        "new chats are refused.", "Check the queue's schedule and agents."))
        else:
            found.append(ok(TOPIC, f"Connect queue '{queue.get('name')}' ({source}) exists."))
    return found


async def _check_virtual_agent(http: ServiceNowHTTP, settings: ServiceNowSettings) -> List[Finding]:
    # Imported here: the backend's module loads Rasa's agent (and TensorFlow, and
    # Sanic, which turns all deprecation warnings back on); Connect needs none of it.
    with warnings.catch_warnings(record=True):  # recorded and dropped, whatever Sanic's filter says
        from connectors.servicenow.servicenow.virtual_agent import INTEGRATION_PATH, message_auth_headers

    # No userId: ServiceNow refuses the call (400) after authenticating it, so
    # no conversation starts. The Message Auth headers go along, as on real calls.
    body: Dict[str, Any] = {"requestId": f"rasa-doctor-{uuid.uuid4().hex}"}
    if settings.app_inbound_id:
        body["appInboundId"] = settings.app_inbound_id
    what = f"POST {INTEGRATION_PATH}"
    message_auth = bool(settings.message_token or settings.message_hash_secret)
    started = time.monotonic()
    try:
        await http.request("POST", INTEGRATION_PATH, json_body=body, extra_headers=message_auth_headers(settings, body))
    except AuthenticationFailed as error:
        finding = _failure(error, settings, what)
        if message_auth:
            finding = dataclasses.replace(finding, fix=finding.fix + " With Message Auth, also check message_token / "
                                                                     "message_hash_secret against the message_auth record.")
        return [finding]
    except ServiceNowRejected as error:
        if _no_such_route(error):
            return [problem(TOPIC, f"{what} answered {error.status} ({error.detail or 'not found'}): the Virtual Agent "
                                   "API (sn_va_as_service) is not installed.",
                            "Install the Store app 'Virtual Agent API' (docs/servicenow-setup.md).")]
        if error.status == 405:
            return [problem(TOPIC, f"{what} answered 405: the Virtual Agent API is disabled on this instance.")]
        if error.status != 400:
            return [_failure(error, settings, what)]
    except ServiceNowUnavailable as error:
        return [_failure(error, settings, what)]
    elapsed_ms = (time.monotonic() - started) * 1000
    accepted = "the Message Auth token/signature and " if message_auth else ""
    found = [ok(TOPIC, f"Reached {settings.instance_url}: the Virtual Agent inbound route exists and accepted "
                       f"{accepted}the {_auth_name(settings)} (answered in {elapsed_ms:.0f} ms).")]
    if settings.app_inbound_id:
        found.append(await _check_provider_application(http, settings.app_inbound_id))
    if settings.reconcile:
        from connectors.servicenow.doctor.tables import check_table_access

        found += await check_table_access(http)
    return found


async def _check_provider_application(http: ServiceNowHTTP, inbound_id: str) -> Finding:
    params = {"sysparm_query": f"inbound_id={inbound_id}", "sysparm_fields": "sys_id,name", "sysparm_limit": "1"}
    try:
        records = result_of(await http.request("GET", PROVIDER_APPS_PATH, params=params))
    except ServiceNowRejected as error:
        return warning(TOPIC, f"Could not verify app_inbound_id {inbound_id}: reading sys_cs_provider_application "
                              f"answered HTTP {error.status}.",
                       "Ask an admin to confirm a provider application with this Inbound Id exists, or grant the "
                       "integration user read access to sys_cs_provider_application.")
    except ServiceNowUnavailable as error:
        return warning(TOPIC, f"Could not verify app_inbound_id {inbound_id}: {error}.")
    if not records:
        return problem(TOPIC, f"No provider application has the Inbound Id {inbound_id} (app_inbound_id).",
                       "Use the Inbound Id of your bot's sys_cs_provider_application record.")
    record = records[0] if isinstance(records, list) and isinstance(records[0], dict) else {}
    return ok(TOPIC, f"Provider application '{record.get('name', inbound_id)}' has the Inbound Id {inbound_id}.")


def _rate_limit(headers: Mapping[str, str], settings: ServiceNowSettings) -> Finding:
    limit = headers.get("X-RateLimit-Limit")
    if limit is None:
        return ok(TOPIC, "No rate-limit headers: no rate-limit rule covers this user's calls.")
    reset = headers.get("X-RateLimit-Reset")
    when = ""
    if reset and reset.isdigit():
        when = ", window resets " + datetime.fromtimestamp(int(reset), tz=timezone.utc).strftime("%H:%M UTC")
    text = f"A rate-limit rule covers this user: {limit} requests per hour{when}."
    try:
        per_hour = float(limit)
    except ValueError:
        return ok(TOPIC, text)
    if settings.api == CONNECT_API:
        per_chat = SECONDS_PER_HOUR / settings.poll_interval
        chats = per_hour / per_chat
        if chats < 10:
            return warning(TOPIC, text + f" Polling every {settings.poll_interval:g} s costs {per_chat:.0f} requests "
                                         f"per hour per active chat: about {chats:.1f} chat-hours per hour.",
                           "Ask for a higher limit for the integration user, or raise poll_interval.")
    elif settings.reconcile:
        per_chat = SECONDS_PER_HOUR / settings.reconcile_interval
        chats = per_hour / per_chat
        if chats < 10:
            return warning(TOPIC, text + f" Reconciling every {settings.reconcile_interval:g} s costs at least "
                                         f"{per_chat:.0f} requests per hour per live chat: about {chats:.1f} "
                                         "chat-hours per hour.",
                           "Ask for a higher limit for the integration user, or raise reconcile_interval.")
    return ok(TOPIC, text)
