"""The hand-back turn: when a handoff ends, the bot takes a turn of its own.

Rasa's way of letting something other than the user start a turn is an
external intent (reminders, ``POST /conversations/{id}/trigger_intent``):
``processor.trigger_external_user_uttered`` appends an invisible
``UserUttered`` with the intent and entities, fills slots from them, and
runs the prediction loop. This module does exactly that, under the
conversation's lock from Rasa's lock store (as the HTTP API does), so the
turn is serialised with the user's own turns on every replica.

The intent is ``handback_intent`` (default ``handoff_ended``) and carries the
end reason as the entity ``handoff_end_reason``; a domain slot of that name
with a ``from_entity`` mapping makes it visible to rules. A domain without the
intent skips the turn (logged once), so bots written before this keep working.

In a CALM assistant (Rasa Pro) an external intent starts no flow: the turn
is then the intent's payload, ``/handoff_ended{"handoff_end_reason": ...}``,
handled as a button's payload is, so the flow whose ``nlu_trigger`` lists the
intent starts (docs/rasa-pro.md).

The turn's output channel decides where its replies go: collected into the
webhook's answer when the end happened in a request, else through the outbox
(callback URL and streams), after the end notice.
"""

import logging
from typing import Any, Dict, List, Optional

from rasa.shared.core.constants import ACTION_LISTEN_NAME
from rasa.shared.core.events import ActionExecuted

from connectors.servicenow.rasa_glue.channels import Agent, AgentSource, OutputChannel, UserMessage
from connectors.servicenow.rasa_glue.output import refused_lock
from connectors.servicenow.rasa_glue.slots import LOCK_POLL_S
from connectors.servicenow.rasa_glue.versions import intent_payload, is_calm_assistant
from connectors.servicenow.retry import BRIEF_RECOVERY, Pauses

logger = logging.getLogger(__name__)

DEFAULT_HANDBACK_INTENT = "handoff_ended"
#: The entity (and, by convention, the slot) that carries the end reason.
END_REASON_ENTITY = "handoff_end_reason"
#: Pauses before a turn out of band tries again to take its conversation:
#: the lock store or the tracker store did not answer (Redis restarting as
#: the agent closed the chat). One try after each pause, 18 s in all, then
#: the turn is given up.
START_AGAIN = BRIEF_RECOVERY


class HandBackTurn:
    """Runs the hand-back intent for one conversation, the way Rasa's
    ``trigger_intent`` endpoint does."""

    def __init__(self, agent: AgentSource, intent: str = DEFAULT_HANDBACK_INTENT, *, start_again: Pauses = START_AGAIN) -> None:
        self._agent = agent
        self.intent = intent
        self._start_again = start_again
        # Domains already told about (by identity): a missing intent is
        # logged once per loaded model, not once per ended handoff.
        self._told_missing: Optional[int] = None

    def enabled(self, agent: Agent) -> bool:
        """Whether the loaded domain declares the intent (``domain.intents``
        holds the names of every intent the domain lists)."""
        domain = agent.domain
        if domain is not None and self.intent in domain.intents:
            return True
        if self._told_missing != id(domain):
            self._told_missing = id(domain)
            logger.info(
                "The domain has no intent '%s'; ended handoffs run no hand-back turn (docs/hand-back.md).", self.intent
            )
        return False

    async def run(self, sender_id: str, reason: str, output: OutputChannel, *, patient: bool = False) -> bool:
        """Take the turn; False when it was skipped (no such intent, no model
        loaded) or failed. Errors of the bot's own turn (an action server
        down, ...) are logged and end here: the handoff is over either way.
        ``patient`` (a turn out of band, nobody waiting for an answer): a turn
        that could not take its conversation (lock or tracker) is tried again
        for a while (``START_AGAIN``); never one that started, which could
        have said something already."""
        agent = self._agent()
        if agent is None or not agent.is_ready() or agent.processor is None or agent.lock_store is None:
            logger.warning("No model is loaded; conversation %s gets no hand-back turn.", sender_id)
            return False
        if not self.enabled(agent):
            return False
        attempt = 0
        while True:
            started: List[bool] = []
            try:
                await self._take(agent, sender_id, reason, output, started)
            except Exception as error:
                never_ran = not started or refused_lock(error) is not None
                if not never_ran or not patient or attempt >= len(self._start_again.delays):
                    logger.exception("The hand-back turn of conversation %s (%s) failed.", sender_id, reason)
                    return False
                logger.warning(
                    "The hand-back turn of conversation %s (%s) could not take the conversation (%s); trying again in %.0f s.",
                    sender_id, reason, type(error).__name__, self._start_again.after(attempt),
                )
                await self._start_again.sleep(attempt)
                attempt += 1
                continue
            logger.info("Ran the hand-back turn '%s' (%s) for conversation %s.", self.intent, reason, sender_id)
            return True

    async def _take(self, agent: Agent, sender_id: str, reason: str, output: OutputChannel, started: List[bool]) -> None:
        """The turn; ``started`` gets an entry once it may have had an effect."""
        entities: List[Dict[str, Any]] = [{"entity": END_REASON_ENTITY, "value": reason}]
        if is_calm_assistant(agent):
            # A flow reacts through its nlu_trigger: the intent goes in as a
            # button's payload would. Rasa takes the conversation's lock
            # inside: started, unless it says it could not (``refused_lock``).
            started.append(True)
            text = intent_payload(self.intent, {END_REASON_ENTITY: reason})
            metadata = {"handoff": {"ended": reason}}
            await agent.handle_message(UserMessage(text, output, sender_id, input_channel=output.name(), metadata=metadata))
            return
        async with agent.lock_store.lock(sender_id, wait_time_in_seconds=LOCK_POLL_S):
            tracker = await agent.processor.fetch_tracker_and_update_session(sender_id, output)
            if tracker.latest_action_name != ACTION_LISTEN_NAME:
                # A turn Rasa ran outside a request (``/execute``, an action
                # that ended the handoff) may stop short of listening. Rules
                # expect a user turn after a listen; without one the fallback
                # reverts to the user's last message, which asked for the
                # agent: a new handoff.
                tracker.update(ActionExecuted(ACTION_LISTEN_NAME), agent.domain)
            started.append(True)
            await agent.trigger_intent(self.intent, entities, output, tracker)
