"""Where ServiceNow sends a Virtual Agent conversation's messages.

The Virtual Agent API answers the channel's requests with a bare 200; the
bot's and the agent's messages come later, POSTed by ServiceNow to the
callback the instance is configured with (a REST message on a real instance,
``va_callback_url`` on the bundled emulator). A wrong or missing one costs no
error anywhere on the channel's side: the user simply never hears from the
agent. So:

* the bundled emulator shows its settings on its control plane
  (``GET /__emu/config``): the doctor checks that ``va_callback_url`` is set,
  points at this channel's callback route, and carries headers the channel
  accepts, and says whether anything answers there now;
* a real instance keeps the setting where the integration user cannot read
  it: the doctor says what it must be.

No secret is printed: the emulator's callback headers are compared, never shown.
"""

import asyncio
import base64
import hmac
from typing import Any, Dict, List, Mapping, Optional
from urllib.parse import urlparse

import aiohttp

from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.doctor.findings import Finding, ok, problem, warning

TOPIC = "callback"
CONFIG_PATH = "/__emu/config"
#: The channel's callback route, for the webhook door and the socket.io door.
CALLBACK_PATHS = ("/webhooks/servicenow/callback", "/webhooks/servicenow_socketio/callback")
PROBE_TIMEOUT_S = 5.0
SETUP = "docs/install.md, \"Try it against the emulator\""


async def check_callback(settings: ServiceNowSettings) -> List[Finding]:
    emulator = await _emulator_config(settings.instance_url)
    if emulator is None:
        return [ok(TOPIC, "ServiceNow POSTs the conversation's messages to the REST message configured on the "
                          "instance, which the integration user cannot read: it must point at "
                          "<Rasa's public URL>/webhooks/servicenow/callback and send the webhook secret "
                          "(docs/servicenow-setup.md).")]
    if isinstance(emulator, str):
        return [warning(TOPIC, f"The instance looks like the bundled emulator, but its control plane did not show its "
                               f"settings ({emulator}): where it sends Virtual Agent messages is not checked.",
                        f"Run the doctor on the emulator's machine; the settings it needs are in {SETUP}.")]
    url = emulator.get("va_callback_url")
    if not url:
        return [problem(TOPIC, "The emulator has no va_callback_url: it never delivers the agent's messages (its log "
                               "warns that va_callback_url is not set; each push is only recorded as 'not_configured').",
                        "Start it with --set va_callback_url=http://127.0.0.1:5005/webhooks/servicenow/callback "
                        "--set 'va_callback_auth={\"X-Webhook-Secret\": \"<webhook_secret>\"}' (" + SETUP + ").")]
    found: List[Finding] = []
    path = urlparse(str(url)).path
    if path.rstrip("/") not in CALLBACK_PATHS:
        found.append(problem(TOPIC, f"The emulator sends Virtual Agent messages to {url}, which is not the channel's "
                                    f"callback route ({CALLBACK_PATHS[0]}).",
                             f"Set va_callback_url to http://<rasa host>:<port>{CALLBACK_PATHS[0]}."))
    accepted = _callback_accepted(settings, emulator.get("va_callback_auth"))
    if accepted is False:
        found.append(problem(TOPIC, "The emulator's callback headers (va_callback_auth) are not the ones the channel "
                                    "checks: each push would be refused with 401, and the user would hear nothing.",
                             f"Send the channel's webhook_secret in {settings.webhook_secret_header} "
                             f"(va_callback_auth={{\"{settings.webhook_secret_header}\": \"<webhook_secret>\"}}), "
                             "or its webhook_username/webhook_password as basic:user:pass."))
    elif accepted is None:
        found.append(warning(TOPIC, "The emulator's va_callback_auth has a form the doctor does not know: not checked."))
    if found:
        return found
    answer = await _answers(str(url))
    where = f"The emulator sends Virtual Agent messages to {url} with headers the channel accepts"
    if answer:
        return [ok(TOPIC, f"{where}; something answers there now ({answer}).")]
    return [ok(TOPIC, f"{where}; nothing answers there yet: start rasa run on that address and port.")]


async def _emulator_config(instance_url: str) -> "Optional[Dict[str, Any] | str]":
    """The emulator's settings; None when the instance is not the emulator; a
    reason (text) when it looks like one but refused to show them."""
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(instance_url.rstrip("/") + CONFIG_PATH, allow_redirects=False) as response:
                if response.status == 200 and response.content_type == "application/json":
                    body = await response.json()
                    return body if isinstance(body, dict) and "va_callback_url" in body else None
                if response.status in (401, 403) and response.content_type == "application/json":
                    return f"HTTP {response.status}"
                return None
    except (aiohttp.ClientError, OSError, ValueError, asyncio.TimeoutError):
        return None


def _callback_accepted(settings: ServiceNowSettings, auth: Any) -> Optional[bool]:
    """Whether the headers the emulator sends pass the channel's check (as ``callback_authorized``)."""
    headers = _auth_headers(auth)
    if headers is None:
        return None
    lowered = {name.lower(): value for name, value in headers.items()}
    if settings.webhook_secret:
        sent = lowered.get(settings.webhook_secret_header.lower(), "")
        if hmac.compare_digest(sent.encode(), settings.webhook_secret.encode()):
            return True
    if settings.webhook_username and settings.webhook_password:
        scheme, _, encoded = lowered.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            return hmac.compare_digest(user.encode(), settings.webhook_username.encode()) and \
                hmac.compare_digest(password.encode(), settings.webhook_password.encode())
    return False


def _auth_headers(auth: Any) -> Optional[Mapping[str, str]]:
    """The headers of the emulator's ``va_callback_auth`` forms (docs/emulator.md)."""
    if isinstance(auth, dict):
        return {str(name): str(value) for name, value in auth.items()}
    if not isinstance(auth, str):
        return None
    kind, _, rest = auth.partition(":")
    if auth == "none":
        return {}
    if kind == "basic" and ":" in rest:
        return {"Authorization": "Basic " + base64.b64encode(rest.encode()).decode()}
    if kind == "bearer" and rest:
        return {"Authorization": f"Bearer {rest}"}
    return None


async def _answers(url: str) -> Optional[str]:
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(url, allow_redirects=False) as response:
                return f"HTTP {response.status} to a GET"
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
        return None
