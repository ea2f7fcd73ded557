"""Reads what every user and every agent saw in a soak run and says what was
lost, doubled or out of order, what the docs allow of it, and how long each
fault took to recover from. Pure: a history (``history.py``) in, a report
(a JSON-able dict) out; no clock, no network.

Every agent message is checked on each sink the user reads (the SSE stream,
and ``callback_url``); every user message in the agent's transcript. A
message missing, twice, or out of order is counted against the docs unless
one of the causes in ``ALLOWED`` explains it, and then it is counted under
that cause, with the doc line that allows it. Nothing is dropped from the
counts: a cause only moves a message from "against the docs" to "allowed".
"""

from __future__ import annotations

import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from connectors.servicenow.texts import UserTexts

TEXTS = UserTexts()
TAG = re.compile(r"^([ua])\.([a-z]{2}-\d{4})\.(\d+)\.(\d+)\b")
LAST_MARK = "(last)"
SINKS = ("sse", "callback")
#: An answer slower than this is reported (not a loss: the user waited).
SLOW_S = 10.0
#: A user whose message goes to a chat the agent closed this long before is left in a dead handoff.
STUCK_AFTER_S = 30.0

#: Causes that make a loss, a double or a reordering what the docs promise, with the line that says so.
ALLOWED: Dict[str, str] = {
    "push_not_acknowledged": (
        "docs/limits.md, 'Virtual Agent pushes are sent once and carry no sequence number', and docs/reliability.md, "
        "'Messages whose push was lost': a push no replica acknowledged (every attempt failed, was refused or "
        "dropped) is read back from ServiceNow's record at once when a later push's read finds the gap (a read slower "
        "than order_wait, or failing, shows that push as it came), else within reconcile_interval; the chat ended "
        "before either (with reconcile: false, pushes lost are lost)"
    ),
    "push_timed_out": (
        "the same, for a push whose every attempt waited longer than ServiceNow does (5 s) for the deployment's "
        "answer, so to ServiceNow the deployment was down (soak finding 8: the callback route on a starved machine)"
    ),
    "push_still_queued_at_end": (
        "not a loss by the channel: ServiceNow (the emulator) had not finished pushing it when the run stopped "
        "waiting (its pushes of one chat go out one at a time; see the run's push timeouts)"
    ),
    "end_push_still_queued_at_end": (
        "not a loss by the channel: the push that closes the chat was still in ServiceNow's queue when the run "
        "stopped waiting"
    ),
    "raced_user_end": (
        "docs/reliability.md, Races: an agent message that races the user's end arrives before the farewell or never"
    ),
    "raced_chat_end": (
        "docs/reliability.md, Races: an agent message that races the end of the chat arrives before the end or never"
    ),
    "ended_by_servicenow_failures": (
        "docs/reliability.md, '5xx burst on every Connect poll': the handoff ends with the connection-lost summary; "
        "what the agent wrote after the last good poll is not fetched, and the user is told"
    ),
    "callback_gave_up": (
        "docs/http-api.md, callback_url: a failing callback is retried with backoff, then logged and skipped"
    ),
    "user_told_not_delivered": (
        "docs/reliability.md, '5xx burst longer than the retries, on a message': the user is told 'Your last "
        "message could not be delivered' and is back with the bot"
    ),
    "pushes_overtook": (
        "docs/limits.md, 'Virtual Agent pushes are sent once and carry no sequence number': pushes that overtake each "
        "other are shown in ServiceNow's order when the read that orders them answers within order_wait (1 s); "
        "otherwise (or with reconcile: false) in arrival order"
    ),
    "callback_repost_after_crash": (
        "docs/deployment.md, Limits that remain: a replica that crashes between posting to callback_url and moving "
        "the pointer: another replica posts that entry again (at least once in a crash)"
    ),
    "callback_repost_after_store_outage": (
        "docs/deployment.md, Limits that remain: an entry posted to callback_url just before Redis stopped "
        "answering is posted again once it is back (its pointer could not be moved): at least once"
    ),
    "servicenow_retry": (
        "docs/limits.md, 'Retries can duplicate': a message POST that timed out may have reached ServiceNow; it is "
        "sent again, so the agent may see it twice"
    ),
    "client_retry": (
        "docs/http-api.md, /webhook: the frontend sent the message again after an answer it could not read (a 502 "
        "from the load balancer when a replica died mid-request); the webhook has no idempotency key"
    ),
    "end_push_not_acknowledged": (
        "docs/reliability.md, 'Messages whose push was lost': the push that closes the chat was never acknowledged; "
        "the end is read back from ServiceNow's record by a later pass (every tenth read of a chat asks whether it is "
        "over), so until then the user stays in the handoff or ends it (with reconcile: false, until they end it)"
    ),
    "end_lost_in_crash": (
        "docs/deployment.md, Limits that remain: a replica that crashes after acknowledging the push that ends the "
        "chat, before ending it here, loses that end"
    ),
    "hand_back_skipped_store_down": (
        "docs/hand-back.md, 'When the turn cannot run': out of band, a turn that cannot take its conversation's "
        "lock or tracker tries again after 1, 2, 5 and 10 s, then gives up (an end the tracker could not take runs "
        "its turn once it is written)"
    ),
    "end_told_by_each_replica_store_down": (
        "docs/hand-back.md, point 4: an end from ServiceNow's side that several replicas take while Redis cannot "
        "remove its record waits up to 30 s for that removal; Redis away for longer, each replica tells the user "
        "and runs the hand-back turn unless the tracker shows by then that another one did"
    ),
    "hand_back_lost_in_crash": (
        "docs/deployment.md, Limits that remain: the hand-back turn runs once, on the replica that ended the "
        "handoff; one that crashes before the turn has run loses it (the end and its notice are stored)"
    ),
    "lb_502_at_crash": (
        "the load balancer's 502 for a request in flight on a replica killed with kill -9 (docs/deployment.md: a "
        "crash; the frontend sends the message again)"
    ),
}
DOCUMENTED_503 = ("StoreUnavailable", "ConversationBusy", "StreamCapacityReached", "AgentNotReady", "ShuttingDown")
END_NOTICES = {
    "agent_closed": TEXTS.agent_closed,
    "chat_ended": TEXTS.chat_ended,
    "session_lost": TEXTS.session_lost,
    "no_agent": TEXTS.no_agent,
    "user_idle": TEXTS.user_idle,
}
CONNECTION_LOST_PREFIX = TEXTS.connection_lost.split("{", 1)[0]
FAILURE_ENDS = ("connection_lost", "session_lost")
#: What the demo bot says in the hand-back turn after the agent closed the chat (domain.yml,
#: utter_ask_chat_rating, by the rule in data/rules.yml); other ends get no answer.
HAND_BACK_QUESTION = "How was your chat with the agent?"
#: A hand-back turn that cannot take its conversation's lock or tracker tries again for this long
#: (rasa_glue/handback.py, START_AGAIN: after 1, 2, 5 and 10 s) ...
HAND_BACK_RETRIES_S = 1.0 + 2.0 + 5.0 + 10.0
#: ... and may take this long more to run.
HAND_BACK_WINDOW_S = HAND_BACK_RETRIES_S + 10.0
#: How long an end from ServiceNow's side waits for Redis to take its record's removal, which decides the one
#: replica that tells the user (core/ending.py, END_HOLD_S).
END_HOLD_S = 30.0


def end_notice(text: Optional[str]) -> Optional[str]:
    """Which of the channel's end-of-handoff notices ``text`` is, if any."""
    if not text:
        return None
    if text.startswith(CONNECTION_LOST_PREFIX):
        return "connection_lost"
    for name, notice in END_NOTICES.items():
        if text == notice:
            return name
    return None


def parse_tag(text: Optional[str]) -> Optional[Tuple[str, str, int, int]]:
    """``(side, user, session, index)`` of a soak message, ``None`` for any other text."""
    match = TAG.match(text or "")
    if not match:
        return None
    return match.group(1), match.group(2), int(match.group(3)), int(match.group(4))


@dataclass
class Settings:
    """What the checker needs to know about how the run was configured."""

    poll_interval: float = 1.0
    request_timeout: float = 5.0
    callback: bool = True
    #: Seconds before the end of a chat within which an agent message may race it.
    race_s: float = 3.0
    #: Extra attempts ServiceNow (the emulator) makes per push.
    push_retries: int = 3
    #: The Virtual Agent deployment reads lost pushes back (``reconcile``), every ``reconcile_interval`` seconds.
    reconcile: bool = False
    reconcile_interval: float = 60.0

    @classmethod
    def of(cls, meta: Dict[str, Any]) -> "Settings":
        poll = float(meta.get("poll_interval", 1.0))
        return cls(
            poll_interval=poll,
            request_timeout=float(meta.get("request_timeout", 5.0)),
            callback=bool(meta.get("callback", True)),
            race_s=2 * poll + 1.0,
            push_retries=int(meta.get("push_retries", 3)),
            reconcile=bool(meta.get("reconcile", False)),
            reconcile_interval=float(meta.get("reconcile_interval", 60.0)),
        )


class Tally:
    """Counts with causes, plus a bounded list of examples per category."""

    def __init__(self, examples: int = 20) -> None:
        self.counts: Counter = Counter()
        self.examples: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
        self._limit = examples

    def add(self, category: str, **example: Any) -> None:
        self.counts[category] += 1
        if len(self.examples[category]) < self._limit:
            self.examples[category].append(example)

    def as_dict(self) -> Dict[str, Any]:
        return {"counts": dict(sorted(self.counts.items())), "examples": dict(sorted(self.examples.items()))}


def check(history: Dict[str, Any]) -> Dict[str, Any]:
    return Checker(history).report()


class Checker:
    def __init__(self, history: Dict[str, Any]) -> None:
        self.h = history
        self.settings = Settings.of(history.get("meta") or {})
        self.faults = list(history.get("faults") or [])
        self._index()

    # -- indexes ---------------------------------------------------------------------------------------------------

    def _index(self) -> None:
        h = self.h
        self.agent_sent = [a for a in h.get("agent_sends") or [] if a.get("status") == 200]
        self.api_of_user: Dict[str, str] = {}
        for send in h.get("sends") or []:
            self.api_of_user.setdefault(send["user"], send.get("api", ""))
        # What each user saw, per sink, in the order it arrived.
        self.seen: Dict[Tuple[str, str], List[Dict[str, Any]]] = defaultdict(list)
        for item in sorted(h.get("received") or [], key=lambda r: r["t"]):
            self.seen[(item["user"], item["sink"])].append(item)
        # Pushes by the messageId they carry; the close of a chat by its session.
        self.pushes_by_message: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
        self.close_pushes: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
        for attempt in h.get("callbacks") or []:
            for message_id in attempt.get("message_ids") or []:
                self.pushes_by_message[message_id].append(attempt)
            if "SwitchToVirtualAgent" in (attempt.get("actions") or []):
                self.close_pushes[attempt["session"]].append(attempt)
        self.rules = h.get("fault_rules") or {}
        # User events per (user, session).
        self.events: Dict[Tuple[str, int], List[Dict[str, Any]]] = defaultdict(list)
        for event in sorted(h.get("user_events") or [], key=lambda e: e["t"]):
            self.events[(event["user"], event["session"])].append(event)
        self.chat_of: Dict[Tuple[str, int], str] = {}
        for chat in h.get("chats") or []:
            if chat.get("user") is not None:
                self.chat_of[(chat["user"], chat["session"])] = chat["chat"]
        self.closes = {c["chat"]: c for c in h.get("agent_closes") or [] if c.get("status") == 200}
        # When the channel stored the end of a chat: the Redis entry id (``<ms>-<n>``) of its handoff event.
        self.end_entry: Dict[str, float] = {}
        for item in h.get("received") or []:
            if item.get("event") == "handoff" and item.get("active") is False and item.get("chat_id"):
                stored = _entry_time(item.get("event_id"))
                if stored is not None:
                    self.end_entry.setdefault(item["chat_id"], stored)
        # Where each user message landed at the agent: tag -> [(chat, seconds)].
        self.at_agent: Dict[str, List[Tuple[str, float]]] = defaultdict(list)
        self.chat_end_event: Dict[str, float] = {}
        for chat, transcript in (h.get("transcripts") or {}).items():
            for message in transcript.get("messages") or []:
                tag = parse_tag(message.get("text"))
                if tag and tag[0] == "u":
                    self.at_agent[_tag_key(message["text"])].append((chat, message["timestamp"] / 1000.0))
            for event in transcript.get("events") or []:
                if event.get("action") in ("END_CONVERSATION", "FAULT_CONVERSATION"):
                    self.chat_end_event.setdefault(chat, event["timestamp"] / 1000.0)

    # -- the report ------------------------------------------------------------------------------------------------

    def report(self) -> Dict[str, Any]:
        to_user = {sink: self._agent_messages(sink) for sink in self._sinks()}
        to_agent = self._user_messages()
        stuck = self._stuck()
        http = self._http()
        bot = self._bot_turns()
        logs = self._replica_logs()
        recovery = self._recovery()
        against = (
            sum(result["against_docs"] for result in to_user.values())
            + to_agent["against_docs"]
            + stuck["against_docs"]
            + http["against_docs"]
            + bot["against_docs"]
            + logs["against_docs"]
        )
        return {
            "load": self._load(),
            "agent_to_user": to_user,
            "user_to_agent": to_agent,
            "stuck": stuck,
            "http": http,
            "bot_turns": bot,
            "replica_logs": logs,
            "faults": recovery,
            "latency": self._latency(),
            "allowed_by": {
                cause: ALLOWED[cause] for cause in sorted(self._causes_used(to_user, to_agent, stuck, http, bot, logs))
            },
            "against_docs": against,
            "ok": against == 0,
        }

    def _sinks(self) -> Sequence[str]:
        return SINKS if self.settings.callback else ("sse",)

    # -- agent to user ---------------------------------------------------------------------------------------------

    def _agent_messages(self, sink: str) -> Dict[str, Any]:
        lost, doubled, order, after_end = Tally(), Tally(), Tally(), Tally()
        delivered = 0
        by_user: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
        for sent in self.agent_sent:
            by_user[sent["user"]].append(sent)
        for user, sent_list in by_user.items():
            items = [i for i in self.seen[(user, sink)] if i.get("event") == "message"]
            counts = Counter(_tag_key(i.get("text")) for i in items if _is_agent_tag(i.get("text")))
            arrivals: Dict[str, List[float]] = defaultdict(list)
            for item in items:
                if _is_agent_tag(item.get("text")):
                    arrivals[_tag_key(item["text"])].append(item["t"])
            for sent in sent_list:
                key = _tag_key(sent["text"])
                example = _agent_example(sent)
                if counts[key] == 0:
                    cause = self._why_agent_message_missing(sent, sink)
                    lost.add(cause or "against_docs", **example)
                    continue
                delivered += 1
                if counts[key] > 1:
                    cause = self._why_agent_message_doubled(sent, sink, arrivals[key])
                    doubled.add(cause or "against_docs", **example, times=counts[key])
            self._order(user, sink, items, order)
            self._after_end(user, sink, items, after_end)
        against = (
            lost.counts["against_docs"] + doubled.counts["against_docs"] + order.counts["against_docs"]
            + after_end.counts["against_docs"]
        )
        return {
            "checked": len(self.agent_sent),
            "delivered": delivered,
            "lost": lost.as_dict(),
            "doubled": doubled.as_dict(),
            "out_of_order": order.as_dict(),
            "after_end": after_end.as_dict(),
            "against_docs": against,
        }

    def _why_agent_message_missing(self, sent: Dict[str, Any], sink: str) -> Optional[str]:
        user, session = sent["user"], sent["session"]
        events = self.events[(user, session)]
        if sent["api"] == "virtual_agent":
            acked = self._first_ack(sent.get("message_id"))
            if acked is None:
                if not self._push_gave_up(sent.get("message_id")):
                    return "push_still_queued_at_end"
                attempts = self.pushes_by_message.get(sent.get("message_id") or "", [])
                if self.settings.reconcile and not self._ended_before_a_pass(user, session, sent, attempts):
                    return None  # a pass had the time to read it back
                if all(a.get("outcome") == "timeout" for a in attempts):
                    return "push_timed_out"
                return "push_not_acknowledged"
            end = self._end_of(user, session, sent.get("chat"))
            if end is not None and acked >= end - 0.5:
                return "raced_user_end" if self._user_ended(events) else "raced_chat_end"
            if end is not None and self._failure_end(events) and acked >= end - self._leave_window():
                # The replica that gave up on ServiceNow stops taking the chat's pushes at once, and stores the end
                # only after its own attempts to leave the failing chat.
                return "raced_chat_end"
        else:
            if self._failure_end(events):
                return "ended_by_servicenow_failures"
            end = self._end_of(user, session, sent.get("chat"))
            if end is not None and sent["t"] >= end - self._race_window(sent["t"], end):
                return "raced_user_end" if self._user_ended(events) else "raced_chat_end"
        if sink == "callback" and user in set(self.h.get("callback_giveups") or []):
            return "callback_gave_up"
        return None

    def _why_agent_message_doubled(self, sent: Dict[str, Any], sink: str, arrivals: List[float]) -> Optional[str]:
        if sink != "callback" or len(arrivals) < 2:
            return None
        first, last = min(arrivals), max(arrivals)
        window = self.settings.request_timeout + 10.0
        for fault in self._faults("kill9", sent["api"]):
            if first - window <= fault["started"] <= last:
                return "callback_repost_after_crash"
        for fault in self._faults("redis"):
            # Posted, then the pointer could not be moved: posted again once Redis is back.
            if first - window <= fault["started"] and fault.get("lifted", last) <= last + 1.0:
                return "callback_repost_after_store_outage"
        return None

    def _order(self, user: str, sink: str, items: List[Dict[str, Any]], tally: Tally) -> None:
        """Agent messages must arrive in the order the agent sent them (first arrivals; doubles are counted apart)."""
        seen: set = set()
        highest: Optional[Tuple[int, int]] = None
        highest_key = ""
        for item in items:
            tag = parse_tag(item.get("text"))
            if not tag or tag[0] != "a":
                continue
            key = _tag_key(item["text"])
            if key in seen:
                continue
            seen.add(key)
            position = (tag[2], tag[3])
            if highest is not None and position < highest:
                cause = self._why_overtaken(key, highest_key)
                tally.add(cause or "against_docs", user=user, sink=sink, late=key, overtaken_by=highest_key, t=item["t"])
            elif highest is None or position > highest:
                highest, highest_key = position, key

    def _why_overtaken(self, late_key: str, early_key: str) -> Optional[str]:
        late = self._sent_by_key().get(late_key)
        early = self._sent_by_key().get(early_key)
        if not late or not early or late["api"] != "virtual_agent":
            return None
        late_ack, early_ack = self._first_ack(late.get("message_id")), self._first_ack(early.get("message_id"))
        if late_ack is not None and early_ack is not None and late_ack > early_ack:
            return "pushes_overtook"
        return None

    def _after_end(self, user: str, sink: str, items: List[Dict[str, Any]], tally: Tally) -> None:
        """No agent message of a chat after the user was shown that the chat ended (SSE: the handoff event that
        names the chat; callback: the end notice, which belongs to the session of the last agent message before)."""
        ended: set = set()
        last_session: Optional[int] = None
        for item in self.seen[(user, sink)]:
            if sink == "sse" and item.get("event") == "handoff" and item.get("active") is False and item.get("chat_id"):
                ended.add(("chat", item["chat_id"]))
                continue
            if item.get("event") != "message":
                continue
            tag = parse_tag(item.get("text"))
            if tag and tag[0] == "a":
                session = tag[2]
                chat = self.chat_of.get((user, session))
                if ("chat", chat) in ended or ("session", session) in ended:
                    tally.add("against_docs", user=user, sink=sink, message=_tag_key(item["text"]), t=item["t"])
                last_session = session
            elif sink == "callback" and end_notice(item.get("text")) and last_session is not None:
                ended.add(("session", last_session))

    # -- user to agent ---------------------------------------------------------------------------------------------

    def _user_messages(self) -> Dict[str, Any]:
        lost, doubled, order, to_bot = Tally(), Tally(), Tally(), Tally()
        checked = delivered = 0
        per_session: Dict[Tuple[str, int], List[Tuple[int, str]]] = defaultdict(list)
        for send in self.h.get("sends") or []:
            if send.get("kind") != "handoff" or not parse_tag(send.get("text")):
                continue
            final = send["attempts"][-1] if send.get("attempts") else {}
            replies = final.get("replies")
            example = {"user": send["user"], "session": send["session"], "text": send["text"],
                       "t": send["attempts"][0]["t"] if send.get("attempts") else None}
            landed = self.at_agent.get(_tag_key(send["text"]), [])
            if final.get("status") != 200:
                if landed:
                    to_bot.add("reached_agent_after_an_error_answer", **example)
                continue
            reply_texts = [r.get("text") for r in replies or [] if isinstance(r, dict)]
            if replies:
                told = any(t and TEXTS.message_not_delivered in t for t in reply_texts)
                if not told:
                    to_bot.add("answered_by_the_bot", **example, replies=reply_texts[:2])
                    continue
            checked += 1
            if not landed:
                cause = self._why_user_message_missing(send)
                lost.add(cause or "against_docs", **example)
                continue
            delivered += 1
            if len(landed) > 1:
                retried = len(send["attempts"]) > 1
                doubled.add("client_retry" if retried else "servicenow_retry", **example, times=len(landed))
            per_session[(send["user"], send["session"])].append((_index_of(send["text"]), _tag_key(send["text"])))
        for (user, session), sent in per_session.items():
            arrived = sorted(sent, key=lambda s: min(t for _, t in self.at_agent[s[1]]))
            highest = -1
            for index, key in arrived:
                if index < highest:
                    order.add("against_docs", user=user, session=session, late=key)
                highest = max(highest, index)
        against = lost.counts["against_docs"] + order.counts["against_docs"]
        return {
            "checked": checked,
            "delivered": delivered,
            "lost": lost.as_dict(),
            "doubled": doubled.as_dict(),
            "out_of_order": order.as_dict(),
            "not_expected": to_bot.as_dict(),
            "against_docs": against,
        }

    def _why_user_message_missing(self, send: Dict[str, Any]) -> Optional[str]:
        sent_at = send["attempts"][0]["t"]
        for event in self.events[(send["user"], send["session"])]:
            if event["what"] == "told_not_delivered" and event["t"] >= sent_at:
                return "user_told_not_delivered"
        for item in self._all_seen(send["user"]):
            if item["t"] >= sent_at and item.get("text") and TEXTS.message_not_delivered in item["text"]:
                if item["t"] <= sent_at + 120:
                    return "user_told_not_delivered"
        return None

    # -- users left in a handoff -------------------------------------------------------------------------------------

    def _stuck(self) -> Dict[str, Any]:
        during = Tally()
        for (user, session), events in self.events.items():
            for event in events:
                if event["what"] != "stuck":
                    continue
                # Stuck: a message sent well after the channel was told that the agent closed the chat still went
                # to the chat. Told: Connect, by the close (the next poll sees it); Virtual Agent, when the close's
                # push was first acknowledged (ServiceNow's pushes of one chat go out one after another, so a
                # slow replica delays it).
                chat = self.chat_of.get((user, session))
                close = self.closes.get(chat) if chat else None
                told = close["t"] if close else None
                if close is not None and self.api_of_user.get(user) == "virtual_agent":
                    acks = [a["at"] for a in self.close_pushes.get(chat, []) if a.get("outcome") == "delivered"]
                    if acks or self.close_pushes.get(chat):
                        told = min(acks) if acks else close["t"]
                if told is None or told > event["t"] - STUCK_AFTER_S:
                    during.add("close_not_told_long_enough_before", user=user, session=session, t=event["t"])
                    continue
                cause = self._why_stuck(user, session)
                during.add(cause or "against_docs", user=user, session=session, t=event["t"], detail=event["detail"],
                           told_s_before=round(event["t"] - told, 1))
        at_end = Tally()
        remedied = {r["user"]: r for r in self.h.get("remedied") or []}
        mirror = Tally()
        for user, state in sorted((self.h.get("final") or {}).items()):
            if not (state.get("record") or state.get("slot")):
                continue
            after = (remedied.get(user) or {}).get("after") or {}
            if not state.get("record") and not after.get("record"):
                # Routed to the bot (the record is the routing truth), but the tracker still says "in handoff".
                if after.get("slot"):
                    mirror.add("against_docs", user=user, state=state, after_remedy=after)
                continue
            sessions = sorted({s for (u, s) in self.events if u == user})
            cause = self._why_stuck(user, sessions[-1]) if sessions else None
            if after.get("record") or after.get("slot"):
                # Still in a handoff after another message and an end command: nothing explains that.
                cause = None
            at_end.add(cause or "against_docs", user=user, state=state, after_remedy=after)
        against = during.counts["against_docs"] + at_end.counts["against_docs"] + mirror.counts["against_docs"]
        behind = Tally()
        for (user, session), events in self.events.items():
            for event in events:
                if event["what"] == "stream_behind":
                    behind.add("end_not_on_stream", user=user, session=session, t=event["t"])
        return {"during_run": during.as_dict(), "at_end": at_end.as_dict(), "tracker_mirror_stale": mirror.as_dict(),
                "stream_never_showed_the_end": behind.as_dict(), "against_docs": against}

    def _why_stuck(self, user: str, session: int) -> Optional[str]:
        chat = self.chat_of.get((user, session))
        if chat is None or self.api_of_user.get(user) != "virtual_agent":
            return None
        attempts = self.close_pushes.get(chat) or []
        acked = [a["at"] for a in attempts if a.get("outcome") == "delivered"]
        if chat in self.closes and not acked and len({a["attempt"] for a in attempts}) < 1 + self.settings.push_retries:
            return "end_push_still_queued_at_end"
        if attempts and not acked:
            return "end_push_not_acknowledged"
        for at in acked:
            for fault in self._faults("kill9", "virtual_agent"):
                if at - 1.0 <= fault["started"] <= at + 5.0:
                    return "end_lost_in_crash"
        return None

    # -- HTTP answers ----------------------------------------------------------------------------------------------

    def _http(self) -> Dict[str, Any]:
        tally = Tally()
        documented: Counter = Counter()
        answers = 0
        for send in self.h.get("sends") or []:
            for attempt in send.get("attempts") or []:
                answers += 1
                self._classify(attempt.get("status"), attempt.get("reason"), send["api"], attempt, tally, documented,
                               route=send.get("kind"), user=send["user"])
        for stream in self.h.get("streams") or []:
            answers += 1
            # A stream's answer is in flight from its request until it closed.
            attempt = {**stream, "done": stream.get("closed") or stream["t"]}
            self._classify(stream.get("status"), stream.get("reason"), self.api_of_user.get(stream["user"], ""),
                           attempt, tally, documented, route="stream", user=stream["user"])
        pushes: Counter = Counter()
        for attempt in self.h.get("callbacks") or []:
            status = attempt.get("status")
            if attempt.get("outcome") in ("fault", "dropped"):
                continue  # the emulator's own fault: nothing reached the channel
            if status is not None and status >= 500:
                if status == 503:
                    pushes["503 (refused: Redis down, or the replica stopping)"] += 1
                elif status == 502:
                    pushes["502 (load balancer: no replica answered)"] += 1
                else:
                    tally.add("against_docs", route="callback", status=status, t=attempt.get("at"))
        slow: Counter = Counter()
        slowest: Dict[str, Any] = {}
        for send in self.h.get("sends") or []:
            for attempt in send.get("attempts") or []:
                took = (attempt.get("done") or attempt["t"]) - attempt["t"]
                if attempt.get("status") == 200 and took > SLOW_S:
                    slow[send.get("kind")] += 1
                    if took > slowest.get("seconds", 0):
                        slowest = {"seconds": round(took, 1), "user": send["user"], "kind": send.get("kind"),
                                   "t": attempt["t"]}
        return {
            "answers": answers,
            "slow_answers": {"over_s": SLOW_S, "by_kind": dict(sorted(slow.items())), "slowest": slowest},
            "documented_503": dict(sorted(documented.items())),
            "push_answers_5xx": dict(sorted(pushes.items())),
            "other_5xx": tally.as_dict(),
            "against_docs": tally.counts["against_docs"],
        }

    def _classify(self, status: Optional[int], reason: Optional[str], api: str, attempt: Dict[str, Any], tally: Tally,
                  documented: Counter, route: Optional[str], user: str) -> None:
        if status is None or status < 500:
            return
        if status == 503 and reason in DOCUMENTED_503:
            documented[reason] += 1
            return
        t = attempt.get("t", 0.0)
        if status == 502 and reason == "UpstreamFailed":
            done = attempt.get("done", t)
            for fault in self._faults("kill9", api):
                if t - 0.5 <= fault["started"] <= done + 0.5:
                    tally.add("lb_502_at_crash", route=route, user=user, t=t)
                    return
        tally.add("against_docs", route=route, user=user, status=status, reason=reason, t=t,
                  upstream=attempt.get("upstream"))

    # -- the bot's own turns ---------------------------------------------------------------------------------------

    def _bot_turns(self) -> Dict[str, Any]:
        """What the bot said where it had to say something: a message meant for the bot (each session's first)
        answered with nothing (soak finding 15: a turn Rasa could not lock, answered 200 and empty); and the
        hand-back turn after the agent closed a chat, which asks how the chat went, once, on the user's stream
        (soak finding 14: a hand-back lost when the lock store did not answer)."""
        silent = Tally()
        for send in self.h.get("sends") or []:
            final = (send.get("attempts") or [{}])[-1]
            if send.get("kind") == "bot" and final.get("status") == 200 and not final.get("replies"):
                silent.add("against_docs", user=send["user"], session=send.get("session"), t=final.get("t"))
        hand_back = Tally()
        again = self._end_notices_again()
        asked = 0
        for user, closes in self._agent_closes_seen().items():
            questions = [i["t"] for i in self.seen[(user, "sse")]
                         if i.get("event") == "message" and i.get("text") == HAND_BACK_QUESTION]
            asked += len(questions)
            for index, (session, shown) in enumerate(closes):
                until = closes[index + 1][1] if index + 1 < len(closes) else float("inf")
                answers = [t for t in questions if shown <= t < until]
                if len(answers) > 1:
                    cause = "end_told_by_each_replica_store_down" if self._redis_away_past_hold(shown) else None
                    hand_back.add(cause or "against_docs", user=user, session=session, t=shown, what="asked twice")
                elif not answers:
                    cause = self._why_no_hand_back(shown, self.api_of_user.get(user, ""))
                    hand_back.add(cause or "against_docs", user=user, session=session, t=shown, what="not asked")
            first = closes[0][1] if closes else float("inf")
            for t in questions:
                if t < first:
                    hand_back.add("against_docs", user=user, t=t, what="asked with no close before it")
        return {
            "bot_messages_answered_with_nothing": silent.as_dict(),
            "hand_back_after_agent_closed": {"closes_seen": sum(len(c) for c in self._agent_closes_seen().values()),
                                             "questions_seen": asked, **hand_back.as_dict()},
            "end_notices_shown_again": again.as_dict(),
            "against_docs": silent.counts["against_docs"] + hand_back.counts["against_docs"] + again.counts["against_docs"],
        }

    def _end_notices_again(self) -> Tally:
        """End notices a user's stream showed more than once for one chat (soak finding 17: a close several
        replicas took while Redis was stopped, each of which told the user)."""
        again = Tally()
        for (user, sink), items in self.seen.items():
            if sink != "sse":
                continue
            shown = 0
            for item in items:
                if item.get("event") == "handoff" and item.get("active"):
                    shown = 0
                elif item.get("event") == "message" and end_notice(item.get("text")):
                    shown += 1
                    if shown > 1:
                        cause = "end_told_by_each_replica_store_down" if self._redis_away_past_hold(item["t"]) else None
                        again.add(cause or "against_docs", user=user, t=item["t"], notice=end_notice(item.get("text")))
        return again

    def _redis_away_past_hold(self, t: float) -> bool:
        """Redis stopped for longer than an end waits for its record's removal (``END_HOLD_S``), around ``t``."""
        for fault in self._faults("redis"):
            lifted = fault.get("lifted") or t
            if lifted - fault["started"] > END_HOLD_S and fault["started"] <= t <= lifted + 30.0:
                return True
        return False

    def _agent_closes_seen(self) -> Dict[str, List[Tuple[int, float]]]:
        """Per user, ``(session, when its stream showed the notice)`` of each chat the agent closed, in order."""
        if not hasattr(self, "_closes_seen"):
            seen: Dict[str, List[Tuple[int, float]]] = defaultdict(list)
            for (user, session), events in sorted(self.events.items(), key=lambda item: item[0]):
                shown = next((e["t"] for e in events if e["what"] == "notice" and e["detail"] == "agent_closed"), None)
                if shown is not None:
                    seen[user].append((session, shown))
            self._closes_seen = {user: sorted(closes, key=lambda c: c[1]) for user, closes in seen.items()}
        return self._closes_seen

    def _why_no_hand_back(self, shown: float, api: str) -> Optional[str]:
        """A hand-back turn may be skipped for an end the tracker could not take, or lost to a store that stayed
        down longer than its retries, or to a crash of a replica of the user's deployment (which one ended the
        handoff, the history does not say)."""
        for fault in self._faults("redis"):
            # The turn starts as the handoff ends, before the user is shown the end, which may be well after Redis
            # is back (the notice waits for it in the outbox, and the stream reconnects).
            lifted = fault.get("lifted") or fault["started"]
            if fault["started"] - 2.0 <= shown <= lifted + 30.0:
                return "hand_back_skipped_store_down"
        for fault in self._faults("kill9", api):
            if shown - HAND_BACK_WINDOW_S <= fault["started"] <= shown + 5.0:
                return "hand_back_lost_in_crash"
        return None

    # -- what the replicas logged ----------------------------------------------------------------------------------

    def _replica_logs(self) -> Dict[str, Any]:
        """Tracebacks in the replicas' logs: each is a failure nobody handled (soak finding 13 showed only there).
        None is explained by the docs: a fault the channel expects is logged in one line, without a traceback."""
        tally = Tally()
        for traceback in self.h.get("replica_tracebacks") or []:
            tally.add("against_docs", **traceback)
        return {**tally.as_dict(), "against_docs": tally.counts["against_docs"]}

    # -- recovery and latency --------------------------------------------------------------------------------------

    def _deliveries(self) -> List[Tuple[float, Optional[float], str]]:
        """``(sent, delivered or None, direction)`` for every checked message."""
        result: List[Tuple[float, Optional[float], str]] = []
        for sent in self.agent_sent:
            result.append((sent["t"], self._first_seen(sent), "agent_to_user"))
        for send in self.h.get("sends") or []:
            if send.get("kind") != "handoff" or not send.get("attempts"):
                continue
            final = send["attempts"][-1]
            if final.get("status") != 200 or final.get("replies"):
                continue
            landed = self.at_agent.get(_tag_key(send["text"]), [])
            result.append((send["attempts"][0]["t"], min((t for _, t in landed), default=None), "user_to_agent"))
        return result

    def _recovery(self) -> List[Dict[str, Any]]:
        deliveries = self._deliveries()
        rows = []
        for fault in self.faults:
            start, lifted = fault.get("started"), fault.get("lifted")
            row = {key: fault.get(key) for key in ("kind", "deployment", "replica", "params", "planned_at", "note")}
            row.update(started=start, lifted=lifted)
            if start is None or lifted is None:
                rows.append(row)
                continue
            window = [(s, d) for s, d, _ in deliveries if start <= s <= lifted]
            done = [d for _, d in window if d is not None]
            row["messages_in_window"] = len(window)
            row["undelivered_in_window"] = sum(1 for _, d in window if d is None)
            row["worst_latency_s"] = round(max((d - s for s, d in window if d is not None), default=0.0), 2)
            row["recovered_after_s"] = round(max(0.0, max(done, default=lifted) - lifted), 2)
            row["fault_s"] = round(lifted - start, 2)
            rows.append(row)
        return rows

    def _latency(self) -> Dict[str, Any]:
        quiet: Dict[str, List[float]] = defaultdict(list)
        for sent, delivered, direction in self._deliveries():
            if delivered is None or self._in_any_fault(sent):
                continue
            quiet[direction].append(delivered - sent)
        return {direction: _stats(values) for direction, values in sorted(quiet.items())}

    def _in_any_fault(self, t: float) -> bool:
        return any(
            f.get("started") is not None and f["started"] - 1 <= t <= (f.get("lifted") or f["started"]) + 30
            for f in self.faults
        )

    # -- load ------------------------------------------------------------------------------------------------------

    def _load(self) -> Dict[str, Any]:
        meta = self.h.get("meta") or {}
        sends = self.h.get("sends") or []
        started = [e for e in self.h.get("user_events") or [] if e["what"] == "handoff_started"]
        by_api: Counter = Counter(self.api_of_user.get(e["user"], "") for e in started)
        attempts = sum(len(s.get("attempts") or []) for s in sends)
        duration = float(meta.get("load_seconds") or meta.get("duration") or 0.0)
        return {
            "users": meta.get("users"),
            "replicas": meta.get("replicas"),
            "apis": meta.get("apis"),
            "seconds": round(duration, 1),
            "handoffs": len(started),
            "handoffs_by_api": dict(by_api),
            "max_concurrent_handoffs": self._max_concurrent(),
            "user_messages": sum(1 for s in sends if s.get("kind") == "handoff"),
            "agent_messages": len(self.agent_sent),
            "webhook_requests": attempts,
            "webhook_requests_per_s": round(attempts / duration, 1) if duration else None,
            "sse_connections": len(self.h.get("streams") or []),
            "items_received": len(self.h.get("received") or []),
            "cpu": meta.get("cpu"),
        }

    def _max_concurrent(self) -> int:
        marks: List[Tuple[float, int]] = []
        for (user, session), events in self.events.items():
            start = next((e["t"] for e in events if e["what"] == "handoff_started"), None)
            end = next((e["t"] for e in events if e["what"] == "ended"), None)
            if start is not None:
                marks.append((start, 1))
                if end is not None:
                    marks.append((end, -1))
        level = peak = 0
        for _, change in sorted(marks):
            level += change
            peak = max(peak, level)
        return peak

    # -- helpers ---------------------------------------------------------------------------------------------------

    def _faults(self, kind: str, deployment: Optional[str] = None) -> Iterable[Dict[str, Any]]:
        for fault in self.faults:
            if fault.get("kind") == kind and fault.get("started") is not None:
                if deployment is None or fault.get("deployment") in (None, deployment):
                    yield fault

    def _push_gave_up(self, message_id: Optional[str]) -> bool:
        """ServiceNow made every attempt it makes for this push (1 + its retries) and none was acknowledged. Fewer
        attempts, or none at all, means the push was still in ServiceNow's queue when the run ended."""
        attempts = {a["attempt"] for a in self.pushes_by_message.get(message_id or "", [])}
        return len(attempts) >= 1 + self.settings.push_retries

    def _ended_before_a_pass(self, user: str, session: int, sent: Dict[str, Any], attempts: List[Dict[str, Any]]) -> bool:
        """With reconciliation a lost push is read back within one ``reconcile_interval`` (plus a read that may be
        retried) unless the chat ended first; a chat that never ended had the run's quiet tail."""
        gave_up = max([a["at"] for a in attempts] + [sent["t"]])
        end = self._end_of(user, session, sent.get("chat"))
        if end is None:
            return False
        return end - gave_up < self.settings.reconcile_interval + 2 * self.settings.request_timeout + 2.0

    def _first_ack(self, message_id: Optional[str]) -> Optional[float]:
        if not message_id:
            return None
        acked = [a["at"] for a in self.pushes_by_message.get(message_id, []) if a.get("outcome") == "delivered"]
        return min(acked) if acked else None

    def _end_of(self, user: str, session: int, chat: Optional[str]) -> Optional[float]:
        """The earliest moment either side ended the chat: the user's end command, the agent's close, ServiceNow's
        record of an END/FAULT_CONVERSATION, or the user being shown the end."""
        times = [e["t"] for e in self.events[(user, session)] if e["what"] in ("end_requested", "ended")]
        if chat is not None and chat in self.end_entry:
            times.append(self.end_entry[chat])
        if chat is not None:
            if chat in self.closes:
                times.append(self.closes[chat]["t"])
            if chat in self.chat_end_event:
                times.append(self.chat_end_event[chat])
        return min(times) if times else None

    def _failure_end(self, events: List[Dict[str, Any]]) -> bool:
        """The chat ended because ServiceNow kept failing: the user was shown the summary (on the stream, or in the
        answer to the message that could not be delivered)."""
        return any(
            (e["what"] in ("ended", "notice") and e["detail"] in FAILURE_ENDS) or e["what"] == "told_not_delivered"
            for e in events
        )

    def _leave_window(self) -> float:
        """How long a replica may spend leaving a failing chat: every attempt (request_timeout each) and the
        backoff between them (backends/http.py defaults: 5 attempts, at most 0.5 + 1 + 2 + 4 s)."""
        return 5 * self.settings.request_timeout + 8.0

    def _user_ended(self, events: List[Dict[str, Any]]) -> bool:
        return any(e["what"] == "end_requested" for e in events)

    def _race_window(self, sent: float, end: float) -> float:
        """A Connect message races the end when no poll could have fetched it before: two poll intervals, or twice
        the p99 of Connect's delivery time in this run when the machine was slower than that; longer while
        ServiceNow was failing polls (each retry waits)."""
        window = max(self.settings.race_s, self._connect_p99() * 2)
        for fault in self.faults:
            if fault.get("kind", "").startswith("sn_") and fault.get("started") is not None:
                if fault["started"] <= end and (fault.get("lifted") or end) >= sent - 30:
                    window = max(window, 30.0)
        return window

    def _connect_p99(self) -> float:
        if not hasattr(self, "_p99"):
            latencies = []
            for sent in self.agent_sent:
                if sent["api"] != "connect":
                    continue
                first = self._first_seen(sent)
                if first is not None:
                    latencies.append(first - sent["t"])
            latencies.sort()
            self._p99 = latencies[int(0.99 * (len(latencies) - 1))] if latencies else 0.0
        return self._p99

    def _first_seen(self, sent: Dict[str, Any]) -> Optional[float]:
        key = _tag_key(sent["text"])
        return next((i["t"] for i in self.seen[(sent["user"], "sse")] if i.get("event") == "message"
                     and _tag_key(i.get("text")) == key), None)

    def _all_seen(self, user: str) -> List[Dict[str, Any]]:
        return [item for sink in SINKS for item in self.seen[(user, sink)]]

    def _sent_by_key(self) -> Dict[str, Dict[str, Any]]:
        if not hasattr(self, "_sent_index"):
            self._sent_index = {_tag_key(s["text"]): s for s in self.agent_sent}
        return self._sent_index

    def _causes_used(self, *results: Any) -> set:
        causes: set = set()

        def walk(value: Any) -> None:
            if isinstance(value, dict):
                for key, inner in value.items():
                    if key == "counts" and isinstance(inner, dict):
                        causes.update(cause for cause in inner if cause in ALLOWED)
                    else:
                        walk(inner)

        for result in results:
            walk(result)
        return causes


def _entry_time(event_id: Optional[str]) -> Optional[float]:
    """The time in a Redis stream entry id (``<ms>-<n>``), in seconds; ``None`` for other ids."""
    head = (event_id or "").split("-", 1)[0]
    return int(head) / 1000.0 if head.isdigit() and len(head) >= 12 else None


def _tag_key(text: Optional[str]) -> str:
    """The tag part of a soak message (``u.va-0001.2.3``); the words after it do not matter."""
    return (text or "").split(" ", 1)[0]


def _is_agent_tag(text: Optional[str]) -> bool:
    tag = parse_tag(text)
    return bool(tag and tag[0] == "a")


def _index_of(text: str) -> int:
    tag = parse_tag(text)
    return tag[3] if tag else -1


def _agent_example(sent: Dict[str, Any]) -> Dict[str, Any]:
    return {key: sent.get(key) for key in ("user", "session", "chat", "text", "t", "message_id")}


def _stats(values: List[float]) -> Dict[str, Any]:
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def q(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * (len(ordered) - 1) + 0.5))], 3)

    return {"count": len(ordered), "median": round(statistics.median(ordered), 3), "p95": q(0.95), "p99": q(0.99),
            "max": round(ordered[-1], 3)}
