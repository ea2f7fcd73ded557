"""The other input channels of ``credentials.yml``: a door left open beside
a channel that checks who calls it.

With ``jwt_key``, the ServiceNow channel (or Rasa's socket.io channel) only
takes a caller's messages for the conversation its token names. Any other
channel of the same Rasa writes to the same trackers: Rasa's ``rest:`` takes
``{"sender": "<anyone>", "message": "/restart"}`` from anybody and resets that
user's conversation while the handoff still counts the chat live. So beside
a channel with ``jwt_key``, every channel that authenticates nobody is a
problem (docs/security.md, "Other channels beside this one").
"""

from typing import Any, List, Mapping

from connectors.servicenow.doctor.findings import Finding, ok, problem, warning

TOPIC = "channels"
OUR_CHANNELS = ("connectors.servicenow.ServiceNowInput", "connectors.servicenow.ServiceNowSocketIOInput")
#: Rasa 3.6 channels that take any caller's word for the sender id (rasa/core/channels/).
OPEN_CHANNELS = {
    "rest": "Rasa's REST channel",
    "callback": "Rasa's callback channel",
}
#: Channels that check who calls them when jwt_key is set, and no one otherwise.
JWT_CHANNELS = {
    "socketio": "Rasa's socket.io channel",
    "connectors.servicenow.ServiceNowInput": "the ServiceNow channel",
    "connectors.servicenow.ServiceNowSocketIOInput": "the ServiceNow channel's socket.io door",
}


def _has_jwt(section: Any) -> bool:
    return isinstance(section, Mapping) and isinstance(section.get("jwt_key"), str) and bool(section["jwt_key"].strip())


def check_channels(credentials: Mapping[str, Any]) -> List[Finding]:
    names = [str(name) for name in credentials]
    guarded = [name for name in names if name in JWT_CHANNELS and _has_jwt(credentials[name])]
    if not guarded:
        if any(name in OPEN_CHANNELS or name in JWT_CHANNELS for name in names if name not in OUR_CHANNELS):
            return [ok(TOPIC, "No channel has jwt_key: on every channel a sender id is the identity (docs/security.md).")]
        return []
    found: List[Finding] = []
    for name in names:
        if name in guarded:
            continue
        if name in OPEN_CHANNELS:
            what = OPEN_CHANNELS[name]
        elif name in JWT_CHANNELS:
            what = f"{JWT_CHANNELS[name]} without jwt_key"
        elif "." in name:
            found.append(warning(
                TOPIC,
                f"'{name}' is a custom channel beside {_listing(guarded)} with jwt_key: the doctor cannot tell whether "
                "it checks who calls it.",
                "Make sure it does; any channel can write to every conversation (docs/security.md).",
            ))
            continue
        else:
            continue  # Rasa's platform channels (facebook, slack, ...) check the platform's signature or token.
        found.append(problem(
            TOPIC,
            f"'{name}' ({what}) takes messages for any sender id from anyone, beside {_listing(guarded)} with "
            f"jwt_key: a caller can write to, or /restart, any user's conversation through it.",
            f"Remove '{name}' from this credentials file (a test setup can use its own file), or give it jwt_key.",
        ))
    if not found:
        found.append(ok(TOPIC, f"Every channel beside {_listing(guarded)} checks who calls it."))
    return found


def _listing(names: List[str]) -> str:
    quoted = [f"'{name}'" for name in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]
