"""Which Rasa runs the channel, and every difference between the Rasas it
supports: Rasa Open Source 3.6 (PyPI ``rasa``) and Rasa Pro 3.18 and later
(PyPI ``rasa-pro``, newest tested 3.21). Both distributions install the
module ``rasa``; the rest of the connector imports what differs from here,
never with a try/except of its own.

Each difference names where it is in the installed source (docs/rasa-pro.md
has the table):

- ``TrackerStore``, ``FailSafeTrackerStore``, ``InMemoryTrackerStore``:
  ``rasa/core/tracker_store.py`` in 3.6, ``rasa/core/tracker_stores/
  tracker_store.py`` from Rasa Pro 3.13 (no alias left behind).
- ``read_config_file``: ``rasa/shared/utils/io.py`` in 3.6,
  ``rasa/shared/utils/yaml.py`` from Rasa Pro 3.8.
- ``prepare_to_load_agent()``: Rasa Pro (3.16 to 3.21) reads the process-wide
  ``rasa.core.config.configuration.Configuration`` while it loads and runs a
  model; ``rasa run`` initialises it, a program that loads an agent itself
  must too.
- ``nlg_output_channel()``: ``NaturalLanguageGenerator.generate(utter_action,
  tracker, output_channel)`` takes the output channel's name in 3.6
  (``rasa/core/nlg/generator.py``) and the ``OutputChannel`` itself in Rasa
  Pro (it calls ``output_channel.name()``: ``rasa/core/nlg/response.py``;
  the same in 3.16).
- ``expand_deferred_variables()``: reading ``credentials.yml``, Rasa 3.6
  expands every ``${VAR}``; Rasa Pro leaves it as written for the keys it
  deems sensitive or resolves later (``SENSITIVE_DATA`` and
  ``DEFERRED_RESOLUTION_KEYS`` in ``rasa/shared/constants.py``, read by
  ``_env_var_constructor`` in ``rasa/shared/utils/yaml.py``), which include
  the channel's ``client_id`` and ``client_secret``.
- ``slot_mapping_types()``: a slot's ``mappings`` are dicts in 3.6 and
  pydantic ``SlotMapping`` objects in Rasa Pro (``rasa/shared/core/
  slot_mappings.py``), where ``custom`` is deprecated for ``controlled``.
- ``BUILTIN_LANGUAGE_SLOT``: Rasa Pro (3.12 on) adds a ``language`` slot to
  every domain and refuses a domain that declares its own
  (``rasa/shared/importers/importer.py``, ``LanguageImporter``).
"""

import os
import re
import sys
from importlib import metadata
from typing import Any, Dict, List, Optional, Tuple

#: The version this connector needs at least, per distribution.
OLDEST_RASA = (3, 6)
OLDEST_RASA_PRO = (3, 18)

INSTALL_HINT = (
    "connectors.servicenow is a Rasa channel and needs Rasa in the same environment. Install it with the "
    "Rasa you run: pip install 'rasa-servicenow-handoff[rasa]' for Rasa 3.6 (Python 3.8-3.10), or "
    "pip install 'rasa-servicenow-handoff[rasa-pro]' for Rasa Pro 3.18 or later (Python 3.10+); "
    "an environment that has Rasa already needs neither extra (docs/install.md)."
)


class RasaNotInstalled(ImportError):
    """Neither ``rasa`` nor ``rasa-pro`` is installed where the channel is imported."""


def _distribution() -> Tuple[str, str]:
    """(distribution name, version) of the installed Rasa."""
    for name in ("rasa-pro", "rasa"):
        try:
            return name, metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    # A source checkout on the path: only the module says which Rasa it is.
    try:
        from rasa.version import __version__
    except ImportError:
        raise RasaNotInstalled(INSTALL_HINT) from None
    return ("rasa-pro" if _numbers(__version__) >= (3, 7) else "rasa"), __version__


def _numbers(version: str) -> Tuple[int, ...]:
    parts = []
    for part in version.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


DISTRIBUTION, RASA_VERSION = _distribution()
#: The (major, minor) of the installed Rasa.
RASA_MINOR: Tuple[int, ...] = _numbers(RASA_VERSION)
IS_RASA_PRO = DISTRIBUTION == "rasa-pro"
#: For logs and the doctor: "Rasa Pro 3.21.0" or "Rasa 3.6.21".
RASA_NAME = f"{'Rasa Pro' if IS_RASA_PRO else 'Rasa'} {RASA_VERSION}"


def supported() -> bool:
    """Whether the installed Rasa is one this connector is made and tested for."""
    if IS_RASA_PRO:
        return RASA_MINOR >= OLDEST_RASA_PRO and RASA_MINOR[0] == 3
    return RASA_MINOR == OLDEST_RASA


try:
    import rasa  # noqa: F401  (the distribution is there; its module must be too)
except ImportError as error:  # pragma: no cover - a broken install
    raise RasaNotInstalled(f"{DISTRIBUTION} {RASA_VERSION} is installed but 'import rasa' fails: {error}") from error

#: Where each moved name lives, per Rasa: imported on first use (``from
#: ...versions import TrackerStore``), so that reading which Rasa is installed
#: loads none of it (the doctor and the emulator stay light).
_TRACKER_STORES = (
    "rasa.core.tracker_stores.tracker_store" if IS_RASA_PRO and RASA_MINOR >= (3, 13) else "rasa.core.tracker_store"
)
_MOVED = {
    "TrackerStore": _TRACKER_STORES,
    "FailSafeTrackerStore": _TRACKER_STORES,
    "InMemoryTrackerStore": _TRACKER_STORES,
    "read_config_file": "rasa.shared.utils.yaml" if IS_RASA_PRO else "rasa.shared.utils.io",
}


def __getattr__(name: str) -> Any:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


#: The slot Rasa Pro declares in every domain itself.
BUILTIN_LANGUAGE_SLOT: Optional[str] = "language" if IS_RASA_PRO and RASA_MINOR >= (3, 12) else None


def nlg_output_channel(name: str) -> Any:
    """The ``output_channel`` argument of ``NaturalLanguageGenerator.generate``
    for a channel called ``name`` (its ``channel:`` response variations)."""
    if not IS_RASA_PRO:
        return name
    from rasa.core.channels.channel import OutputChannel

    class NamedOutput(OutputChannel):
        """Stands for the channel in the NLG's call; it is never sent through."""

        @classmethod
        def name(cls) -> str:
            return name

    return NamedOutput()


def is_calm_assistant(agent: Any) -> bool:
    """Whether the loaded model is a CALM assistant (Rasa Pro: its graph runs
    the ``FlowPolicy``; ``MessageProcessor.is_calm_assistant`` in 3.16 to 3.21)."""
    return IS_RASA_PRO and bool(getattr(getattr(agent, "processor", None), "is_calm_assistant", False))


def intent_payload(intent: str, entities: Dict[str, Any]) -> str:
    """``/intent{"entity": "value"}``: the message a button sends. In a CALM
    assistant it is the way for an intent to start a flow: Rasa Pro reads the
    payload without running NLU and its ``NLUCommandAdapter`` turns the
    intent into a start-flow command for the flow whose ``nlu_trigger`` lists
    it (``MessageProcessor._parse_message_with_commands_and_intents`` and
    ``_nlu_to_commands``, rasa/core/processor.py). An external intent
    (``trigger_intent``) brings no command, so it starts no flow there."""
    import json

    return f"/{intent}{json.dumps(entities, separators=(',', ':'))}" if entities else f"/{intent}"


def expand_deferred_variables(options: Dict[str, Any]) -> Dict[str, Any]:
    """The channel's options with the ``${VAR}`` Rasa Pro left unexpanded
    expanded as Rasa 3.6 expands them (an unset variable is an error, as it
    is there)."""
    if not IS_RASA_PRO:
        return options
    from rasa.shared import constants

    deferred = set(getattr(constants, "SENSITIVE_DATA", ())) | set(getattr(constants, "DEFERRED_RESOLUTION_KEYS", ()))
    expanded = dict(options)
    for key in deferred & set(options):
        value = options[key]
        if not isinstance(value, str) or "${" not in value:
            continue
        # Rasa's pattern: ${NAME} (a `$` alone, as in a password, is kept).
        unset = [name for name in re.findall(r"\$\{(\w+)\}", value) if name not in os.environ]
        if unset:
            from connectors.servicenow.errors import ConfigurationError

            raise ConfigurationError(
                f"'{key}' names the environment variable(s) {', '.join(unset)}, which are not set."
            )
        expanded[key] = re.sub(r"\$\{(\w+)\}", lambda match: os.environ[match.group(1)], value)
    return expanded


#: The mapping types that leave a slot to the channel (no NLU or LLM fills it).
CHANNEL_OWNED_MAPPINGS = ("custom", "controlled")


def slot_mapping_types(slot: Any) -> List[str]:
    """The ``type`` of each of a domain slot's mappings, as written."""
    types = []
    for mapping in getattr(slot, "mappings", None) or []:
        kind = mapping.get("type") if isinstance(mapping, dict) else getattr(mapping, "type", None)
        types.append(str(getattr(kind, "value", kind)))
    return types


def prepare_to_load_agent() -> None:
    """Do what ``rasa run`` does before it loads a model: Rasa Pro's processor
    reads its endpoints from the process-wide ``Configuration`` (3.16 to 3.21:
    ``initialise_empty_endpoints``, when they come from the caller's stores)."""
    if not IS_RASA_PRO:
        return
    try:
        from rasa.core.config.configuration import Configuration
    except ImportError:  # a Rasa Pro without the process-wide configuration
        return
    Configuration.initialise_empty_endpoints()


def init_redis_lock_store(store: Any, options: Dict[str, Any]) -> None:
    """Run ``RedisLockStore.__init__`` on ``store`` with the options of
    ``endpoints.yml``: Rasa 3.6 takes them as arguments, Rasa Pro as one
    validated ``RedisLockStoreConfig``."""
    from rasa.core.lock_store import RedisLockStore

    if not IS_RASA_PRO:
        RedisLockStore.__init__(store, **options)
        return
    from rasa.core.lock_store import RedisLockStoreConfig

    RedisLockStore.__init__(store, RedisLockStoreConfig.model_validate(options))


def python_version() -> str:
    return ".".join(str(part) for part in sys.version_info[:3])
