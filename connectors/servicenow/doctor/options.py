"""The channel's section of ``credentials.yml``, read the way ``rasa run`` reads it."""

import datetime
import difflib
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional
from urllib.parse import urlparse

from connectors.servicenow import config
from connectors.servicenow.config import SOCKETIO_DEFAULTS, VIRTUAL_AGENT_API, ServiceNowSettings, SocketIOSettings
from connectors.servicenow.doctor.channels import check_channels
from connectors.servicenow.doctor.findings import Finding, ok, problem, warning
from connectors.servicenow.errors import ConfigurationError

CHANNEL_KEY = "connectors.servicenow.ServiceNowInput"
#: The socket.io door (docs/socketio.md): the same options plus Rasa's socketio ones.
SOCKETIO_CHANNEL_KEY = "connectors.servicenow.ServiceNowSocketIOInput"
#: Options other branches add; the doctor checks them before this build of
#: the channel knows them (see ``redis_url`` in docs/doctor.md).
FORESEEN_OPTIONS = ("redis_url",)
SECRET_OPTIONS = (
    "password",
    "client_secret",
    "webhook_secret",
    "webhook_password",
    "message_token",
    "message_hash_secret",
    "callback_secret",
)
SHORT_SECRET = 16
BUSY_POLL_S = 0.5
IDLE_TOO_SHORT_S = 60.0
TOPIC = "options"


@dataclass
class ChannelOptions:
    findings: List[Finding] = field(default_factory=list)
    #: The raw section after ``${ENV}`` expansion (None when it could not be read).
    raw: Optional[Dict[str, Any]] = None
    settings: Optional[ServiceNowSettings] = None

    @property
    def secrets(self) -> List[str]:
        values = [str(self.raw.get(name) or "") for name in SECRET_OPTIONS] if self.raw else []
        redis_url = (self.raw or {}).get("redis_url")
        if isinstance(redis_url, str):
            values.append(urlparse(redis_url).password or "")
        return values


def known_options() -> List[str]:
    # The parser table is the one list of options the channel accepts.
    return sorted(config._PARSERS)


def check_credentials(path: Path) -> ChannelOptions:
    result = ChannelOptions()
    found = result.findings
    credentials = _read(path, found)
    if credentials is None:
        return result
    key = CHANNEL_KEY if CHANNEL_KEY in credentials or SOCKETIO_CHANNEL_KEY not in credentials else SOCKETIO_CHANNEL_KEY
    section = credentials.get(key)
    if key not in credentials:
        close = difflib.get_close_matches(CHANNEL_KEY, [str(key) for key in credentials], n=1)
        hint = f" (is '{close[0]}' meant to be it?)" if close else ""
        found.append(
            problem(
                "credentials",
                f"{path} has no '{CHANNEL_KEY}' section{hint}: rasa run would not load the channel.",
                f"Add the section; see docs/install.md. Sections found: {', '.join(map(str, credentials)) or 'none'}.",
            )
        )
        return result
    if not isinstance(section, dict) or not section:
        found.append(problem("credentials", f"The '{key}' section of {path} is empty.",
                             "Give at least instance_url, the credentials and api (docs/configuration.md)."))
        return result
    found.append(ok("credentials", f"{path} read as rasa run reads it (${{ENV}} variables expanded)."))
    found.extend(check_channels(credentials))
    result.raw = {name: value for name, value in section.items() if key == CHANNEL_KEY or name not in SOCKETIO_DEFAULTS}
    if SOCKETIO_CHANNEL_KEY in credentials:
        found.extend(_socketio_options(credentials[SOCKETIO_CHANNEL_KEY]))
        if key == CHANNEL_KEY and not _same_core(credentials):
            found.append(warning(
                TOPIC,
                "The webhook and the socket.io door have different ServiceNow options and no redis_url: each keeps "
                "its own handoff state in the process (after a restart both poll the live Connect chats).",
                "Give both sections the same options (the socket.io one adds only Rasa's socketio options), "
                "or the same redis_url (docs/limits.md).",
            ))
    result.settings = _parse(result.raw, found)
    if result.settings is not None:
        found.extend(_advice(result.settings))
    return result


def _same_core(credentials: Mapping[str, Any]) -> bool:
    """Whether the two doors share their handoff state: one core for equal
    ServiceNow options, or Redis for both."""
    sections = [credentials.get(CHANNEL_KEY), credentials.get(SOCKETIO_CHANNEL_KEY)]
    if not all(isinstance(section, dict) for section in sections):
        return True  # reported as an empty section
    webhook, socket = ({k: v for k, v in s.items() if k not in SOCKETIO_DEFAULTS and not config._is_unset(v)}
                       for s in sections if isinstance(s, dict))
    return webhook == socket or all(isinstance(s, dict) and not config._is_unset(s.get("redis_url")) for s in sections)


def _socketio_options(section: Any) -> List[Finding]:
    """Rasa's socketio options of the socket.io door's section."""
    if not isinstance(section, dict):
        return [problem(TOPIC, f"The '{SOCKETIO_CHANNEL_KEY}' section is empty.", "See docs/socketio.md.")]
    try:
        socket = SocketIOSettings.from_credentials(section)
    except ConfigurationError as error:
        return [problem(TOPIC, f"socket.io: {error}", "See docs/socketio.md.")]
    found = [ok(TOPIC, f"The socket.io door accepts its options: path {socket.socketio_path}, "
                       f"events {socket.user_message_evt}/{socket.bot_message_evt}.")]
    if not socket.session_persistence:
        found.append(warning(TOPIC, "session_persistence is off: each socket is its own conversation, and a page "
                                    "reload starts a new one with nothing replayed.",
                             "Set session_persistence: true for rasa-webchat (docs/socketio.md)."))
    return found


def _read(path: Path, found: List[Finding]) -> Optional[Mapping[str, Any]]:
    from rasa.shared.exceptions import RasaException
    from connectors.servicenow.rasa_glue.versions import expand_deferred_variables, read_config_file

    if not path.is_file():
        found.append(problem("credentials", f"{path} does not exist.", "Pass --credentials with the file rasa run uses."))
        return None
    try:
        credentials = read_config_file(path)
        # Rasa Pro leaves the ${VAR} of client_id and client_secret to the channel, which expands them.
        for key in (CHANNEL_KEY, SOCKETIO_CHANNEL_KEY):
            if isinstance(credentials.get(key), dict):
                credentials[key] = expand_deferred_variables(credentials[key])
    except RasaException as error:
        # Also what rasa run says for a ${VAR} that is not set (on Rasa Pro, the channel's ConfigurationError).
        found.append(problem("credentials", f"rasa run cannot read {path}: {error}",
                             "Fix the YAML, or export the environment variables it names."))
        return None
    except Exception as error:  # ruamel's parser errors have no common base worth naming
        found.append(problem("credentials", f"{path} is not valid YAML: {type(error).__name__}: {error}"))
        return None
    return credentials


def _parse(raw: Dict[str, Any], found: List[Finding]) -> Optional[ServiceNowSettings]:
    known = known_options()
    options = {name: value for name, value in raw.items() if not config._is_unset(value)}
    for name in sorted(set(options) - set(known)):
        if name in FORESEEN_OPTIONS:
            found.append(problem(
                TOPIC,
                f"'{name}' is not an option of this version of the channel: rasa run refuses it.",
                "Install a version of the connector with the Redis store, or remove the option.",
            ))
            continue
        close = difflib.get_close_matches(name, known, n=1)
        found.append(problem(
            TOPIC,
            f"Unknown option '{name}'" + (f" (did you mean '{close[0]}'?)" if close else "") + ": rasa run refuses it.",
            "Remove or rename it; every option is in docs/configuration.md.",
        ))
    invalid = False
    for name in sorted(set(options) & set(known)):
        try:
            config._PARSERS[name](options[name])
        except (TypeError, ValueError, ConfigurationError) as error:
            invalid = True
            found.append(problem(TOPIC, f"Invalid value for '{name}': {_without_value(name, error)}.",
                                 "See the option's row in docs/configuration.md."))
    if invalid or any(name not in known for name in options):
        return None
    try:
        settings = ServiceNowSettings.from_credentials(options)
    except ConfigurationError as error:
        found.append(problem(TOPIC, str(error), "See docs/configuration.md."))
        return None
    auth = "OAuth 2.0 (" + ("password grant" if settings.username else "client credentials") + ")" \
        if settings.uses_oauth else "Basic auth"
    found.append(ok(TOPIC, f"The channel accepts its options: api {settings.api}, {auth}, instance {settings.instance_url}."))
    return settings


def _without_value(name: str, error: Exception) -> str:
    # A parser may quote the value; for a secret that would print it.
    return "not a usable value" if name in SECRET_OPTIONS else str(error)


def _advice(settings: ServiceNowSettings) -> List[Finding]:
    found: List[Finding] = []
    url = urlparse(settings.instance_url)
    if url.scheme == "http" and not _is_loopback(url.hostname or ""):
        found.append(warning(TOPIC, f"instance_url uses plain http to {url.hostname}: credentials travel unencrypted.",
                             "Use the instance's https URL."))
    if not settings.verify_tls:
        found.append(warning(TOPIC, "verify_tls is off: the instance's certificate is not checked.",
                             "Turn it back on outside a test setup."))
    if settings.api == VIRTUAL_AGENT_API:
        if settings.webhook_secret and len(settings.webhook_secret) < SHORT_SECRET:
            found.append(warning(TOPIC, f"webhook_secret is shorter than {SHORT_SECRET} characters.",
                                 "Use a long random value, e.g. python -c 'import secrets; print(secrets.token_hex(16))'."))
        if not (settings.message_token or settings.message_hash_secret):
            found.append(ok(TOPIC, "No Message Auth (message_token / message_hash_secret): guest conversations only."))
    elif settings.poll_interval < BUSY_POLL_S:
        found.append(warning(TOPIC, f"poll_interval {settings.poll_interval:g} s: every active chat costs "
                                    f"{1 / settings.poll_interval:.0f} requests per second on the instance.",
                             "1 s is the default; the instance's rate limit counts these requests."))
    if not settings.callback_url:
        found.append(ok(TOPIC, "No callback_url: agent replies reach users through the /stream endpoint only."))
    elif settings.callback_secret:
        found.append(ok(TOPIC, "callback_secret is set: every POST to callback_url is signed (Standard Webhooks "
                               "headers webhook-id, webhook-timestamp, webhook-signature; docs/http-api.md)."))
    else:
        found.append(warning(TOPIC, "callback_url without callback_secret: the frontend cannot tell the channel's POSTs "
                                    "from forged ones (they carry a webhook-id, but no signature).",
                             "Set callback_secret to the output of python -m connectors.servicenow.signing and verify "
                             "the signature in the frontend (docs/http-api.md#signed-callbacks)."))
    if not settings.attachment_hosts:
        found.append(ok(TOPIC, "No attachment_hosts: users' file URLs may point at public addresses and at the "
                               "instance only (loopback, private and metadata addresses are refused; docs/security.md)."))
    else:
        found.append(ok(TOPIC, f"attachment_hosts: users' file URLs may point at {', '.join(settings.attachment_hosts)} "
                               "only, wherever those hosts are."))
    found.extend(_waiting_advice(settings))
    return found


def _waiting_advice(settings: ServiceNowSettings) -> List[Finding]:
    found: List[Finding] = []
    wait, every, idle = settings.agent_wait_timeout, settings.waiting_notice_interval, settings.user_idle_timeout
    if wait and every and every >= wait:
        found.append(warning(TOPIC, f"waiting_notice_interval ({every:g} s) is not shorter than agent_wait_timeout "
                                    f"({wait:g} s): the chat is left before the first notice.",
                             "Make the interval a fraction of the timeout, e.g. 60 s for 300 s."))
    if idle and idle < IDLE_TOO_SHORT_S:
        found.append(warning(TOPIC, f"user_idle_timeout is {idle:g} s: a user reading the agent's answer may be cut off.",
                             "A few minutes is usual, e.g. 600."))
    hours = settings.business_hours
    if hours is not None:
        now = datetime.datetime.now(datetime.timezone.utc)
        state = "open now" if hours.is_open(now) else f"closed now, next opening {hours.describe_opening(now)}"
        found.append(ok(TOPIC, f"business_hours in {hours.timezone}: {state}."))
    return found


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
