"""The domain: the slots that hold a conversation's handoff state, a
response whose custom payload starts a handoff, and the ``utter_servicenow_*``
responses that say the channel's texts."""

import difflib
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from connectors.servicenow.config import CONNECT_API
from connectors.servicenow.doctor.findings import Finding, ok, problem, warning
from connectors.servicenow.rasa_glue.versions import (
    BUILTIN_LANGUAGE_SLOT,
    CHANNEL_OWNED_MAPPINGS,
    RASA_NAME,
    slot_mapping_types,
)
from connectors.servicenow.texts import RESPONSE_PREFIX, text_names

TOPIC = "domain"
HANDOFF_KEY = "handoff"
#: slot -> (slot types that hold its value, the one docs/configuration.md gives)
EXPECTED_SLOTS: Dict[str, Tuple[Sequence[str], str]] = {
    "handoff_active": (("bool",), "{type: bool, initial_value: false, influence_conversation: false, mappings: [{type: custom}]}"),
    "live_chat_id": (("text", "any"), "{type: text, influence_conversation: false, mappings: [{type: custom}]}"),
    "live_chat_user": (("text", "any"), "{type: text, influence_conversation: false, mappings: [{type: custom}]}"),
    "live_chat_last_updated": (("any", "float"), "{type: any, influence_conversation: false, mappings: [{type: custom}]}"),
    "live_chat_seen_ids": (("any", "list"), "{type: any, influence_conversation: false, mappings: [{type: custom}]}"),
}


def check_domain(
    path: Path,
    api: Optional[str] = None,
    messages: Sequence[str] = (),
    handback_intent: Optional[str] = None,
) -> Tuple[List[Finding], List[str]]:
    """Findings, and the Connect queues the handoff responses name (to probe
    them). ``messages``: the names the ``messages`` option sets."""
    from rasa.shared.core.domain import Domain
    from rasa.shared.exceptions import RasaException

    if not path.exists():
        return [problem(TOPIC, f"{path} does not exist.", "Pass --domain with your project's domain file or folder.")], []
    try:
        domain = Domain.load(str(path))
    except (RasaException, OSError, ValueError) as error:
        return [problem(TOPIC, f"Rasa cannot load {path}: {error}")], []
    found = _check_slots(domain)
    if BUILTIN_LANGUAGE_SLOT and any(slot.name == BUILTIN_LANGUAGE_SLOT for slot in domain.slots):
        found.append(problem(
            TOPIC, f"The domain declares a slot '{BUILTIN_LANGUAGE_SLOT}', which {RASA_NAME} refuses: it is a built-in slot.",
            "Remove it; set config.yml's language (and additional_languages) instead (docs/rasa-pro.md).",
        ))
    if not domain.session_config.carry_over_slots:
        found.append(warning(
            TOPIC,
            "session_config.carry_over_slots_to_new_session is false: a new session during a handoff forgets it.",
            "Set it to true (the handoff state lives in slots).",
        ))
    if handback_intent:
        found.append(_check_handback(domain, handback_intent))
    response_findings, queues = _check_responses(domain.responses, api)
    return found + response_findings + check_text_responses(domain.responses, messages), queues


def check_text_responses(responses: Mapping[str, Any], messages: Sequence[str] = ()) -> List[Finding]:
    """Which channel texts the domain says (``utter_servicenow_<name>``),
    responses with that prefix that name no text (a typo: never said), and
    ``messages`` entries that a response without a condition always overrides."""
    names = text_names()
    overridden = [name[len(RESPONSE_PREFIX):] for name in sorted(responses) if name.startswith(RESPONSE_PREFIX)]
    found: List[Finding] = []
    for name in overridden:
        if name in names:
            continue
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"Did you mean {RESPONSE_PREFIX}{close[0]}? " if close else ""
        found.append(warning(
            TOPIC, f"Response '{RESPONSE_PREFIX}{name}' names no text of the channel: it is never said.",
            f"{hint}The texts are: {', '.join(names)} (docs/configuration.md, messages).",
        ))
    known = [name for name in overridden if name in names]
    for name in sorted(set(messages) & set(known)):
        variations = responses.get(f"{RESPONSE_PREFIX}{name}") or []
        if any(isinstance(v, dict) and not v.get("condition") and v.get("channel") in (None, "servicenow")
               for v in variations):
            found.append(warning(
                TOPIC, f"'messages.{name}' is never said: '{RESPONSE_PREFIX}{name}' has a variation without a "
                       "condition, which always comes first.",
                "Remove one of the two, or keep only conditional variations in the response (the option is then "
                "said when none fits).",
            ))
    if known:
        found.append(ok(TOPIC, f"The domain says these channel texts (the rest come from 'messages' or the defaults): "
                               f"{', '.join(known)}."))
    return found


def _check_handback(domain: Any, intent: str) -> Finding:
    if intent not in domain.intents:
        return warning(
            TOPIC,
            f"No intent '{intent}' (handback_intent): the bot takes no turn when a handoff ends.",
            "Optional: add it, the entity and slot handoff_end_reason, and rules (docs/hand-back.md).",
        )
    if "handoff_end_reason" not in {slot.name for slot in domain.slots}:
        return warning(
            TOPIC,
            f"Intent '{intent}' is declared but no slot 'handoff_end_reason': rules cannot tell why a handoff ended.",
            "Add the slot with a from_entity mapping of the entity handoff_end_reason (docs/hand-back.md).",
        )
    return ok(TOPIC, f"Hand-back intent '{intent}' with the slot handoff_end_reason.")


def _check_slots(domain: Any) -> List[Finding]:
    found: List[Finding] = []
    slots = {slot.name: slot for slot in domain.slots}
    missing = [name for name in EXPECTED_SLOTS if name not in slots]
    for name in missing:
        found.append(problem(
            TOPIC, f"Slot '{name}' is missing: the channel cannot keep the handoff state.",
            f"Add under slots:\n  {name}: {EXPECTED_SLOTS[name][1]}",
        ))
    for name, (types, declaration) in EXPECTED_SLOTS.items():
        slot = slots.get(name)
        if slot is None:
            continue
        issues = len(found)
        if slot.type_name not in types:
            found.append(problem(TOPIC, f"Slot '{name}' has type {slot.type_name}; the channel stores a "
                                        f"{'/'.join(types)} value in it.", f"Declare it as {declaration}"))
        if getattr(slot, "influence_conversation", False):
            found.append(warning(TOPIC, f"Slot '{name}' influences the conversation: the bot's predictions then "
                                        "depend on the handoff's bookkeeping.", "Set influence_conversation: false."))
        kinds = sorted(set(slot_mapping_types(slot)) - set(CHANNEL_OWNED_MAPPINGS))
        if kinds:
            found.append(problem(TOPIC, f"Slot '{name}' has mapping(s) {', '.join(kinds)}: Rasa would fill it from "
                                        "user messages, over the channel's state.", "Use mappings: [{type: custom}]."))
        if name == "handoff_active" and slot.initial_value not in (None, False):
            found.append(problem(TOPIC, "Slot 'handoff_active' starts out true: every new user would be in a handoff.",
                                 "Set initial_value: false."))
        if len(found) == issues:
            found.append(ok(TOPIC, f"Slot '{name}' ({slot.type_name})."))
    return found


def _check_responses(responses: Mapping[str, Any], api: Optional[str]) -> Tuple[List[Finding], List[str]]:
    found: List[Finding] = []
    queues: List[str] = []
    starters = []
    enders = []
    for name, variations in sorted(responses.items()):
        for variation in variations or []:
            custom = variation.get("custom") if isinstance(variation, dict) else None
            if not isinstance(custom, dict) or HANDOFF_KEY not in custom:
                continue
            options = custom[HANDOFF_KEY]
            if isinstance(options, dict) and "end" in options:
                if options["end"] is not True or len(options) > 1:
                    found.append(warning(TOPIC, f"Response '{name}': an end payload is exactly handoff: {{end: true}}.",
                                         "Write handoff: {end: true} (docs/hand-back.md)."))
                enders.append(name)
                continue
            starters.append(name)
            if options is not None and not isinstance(options, dict):
                found.append(warning(
                    TOPIC, f"Response '{name}': 'handoff' is a {type(options).__name__}, not a mapping; "
                    "the channel reads it as no options.", "Write handoff: {} or a mapping of options.",
                ))
                continue
            options = options or {}
            for key in sorted(set(options) - {"message", "queue_id", "context_variables"}):
                found.append(warning(TOPIC, f"Response '{name}': the handoff payload's '{key}' is not used.",
                                     "Its keys are message, queue_id and context_variables (or end: true alone)."))
            queue = options.get("queue_id")
            if isinstance(queue, str) and queue and api == CONNECT_API:
                queues.append(queue)
            if options.get("context_variables") and api == CONNECT_API:
                found.append(warning(TOPIC, f"Response '{name}': context_variables only route Virtual Agent chats; "
                                            "Connect ignores them."))
            if "context_variables" in options and not isinstance(options["context_variables"], dict):
                found.append(warning(TOPIC, f"Response '{name}': context_variables is not a mapping and is ignored."))
    if enders:
        found.append(ok(TOPIC, f"Response(s) that end a handoff: {', '.join(dict.fromkeys(enders))}."))
    if starters:
        found.append(ok(TOPIC, f"Response(s) that start a handoff: {', '.join(dict.fromkeys(starters))}."))
    else:
        found.append(problem(
            TOPIC, "No response has the 'handoff' custom payload: nothing can start a handoff.",
            "Add a response such as\n  utter_handoff:\n    - custom:\n        handoff: {}\nand a rule that uses it "
            "(docs/install.md).",
        ))
    return found, sorted(set(queues))
