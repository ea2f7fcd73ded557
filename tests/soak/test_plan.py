"""The seeded plan of a soak run: the same seed replays the same fault
schedule and the same scripts; faults never overlap and fit in the run."""

import re

import pytest

from soak.plan import (
    FAULT_KINDS, PUSH_FAULTS, RECOVERY_BUDGET, agent_text, fault_schedule, parse_kinds, session_plan, user_ids,
    user_profile, user_text,
)
from soak.checker import parse_tag

BOTH = ["virtual_agent", "connect"]


def test_the_same_seed_replays_the_same_schedule_and_scripts():
    assert fault_schedule(7, 600, FAULT_KINDS, BOTH, 3) == fault_schedule(7, 600, FAULT_KINDS, BOTH, 3)
    assert session_plan(7, "va-0003", 2) == session_plan(7, "va-0003", 2)
    assert user_profile(7, "cn-0001", 30) == user_profile(7, "cn-0001", 30)


def test_another_seed_gives_another_schedule_and_other_scripts():
    assert fault_schedule(7, 600, FAULT_KINDS, BOTH, 3) != fault_schedule(8, 600, FAULT_KINDS, BOTH, 3)
    assert session_plan(7, "va-0003", 2) != session_plan(8, "va-0003", 2)


def test_faults_come_one_after_another_inside_the_run_and_cover_every_kind():
    duration = 600
    schedule = fault_schedule(1, duration, FAULT_KINDS, BOTH, 3)
    assert {fault.kind for fault in schedule} == set(FAULT_KINDS)
    for earlier, later in zip(schedule, schedule[1:]):
        assert earlier.at + earlier.duration + RECOVERY_BUDGET.get(earlier.kind, 0) < later.at
    assert schedule[0].at > 0
    assert schedule[-1].at + schedule[-1].duration < duration
    for fault in schedule:
        if fault.kind in ("kill9", "sigterm"):
            assert fault.deployment in BOTH and 0 <= fault.replica < 3


def test_push_faults_need_the_virtual_agent_deployment():
    schedule = fault_schedule(1, 600, FAULT_KINDS, ["connect"], 3)
    assert schedule and not any(fault.kind in PUSH_FAULTS for fault in schedule)


def test_fault_kinds_are_parsed_and_unknown_ones_refused():
    assert parse_kinds("all") == list(FAULT_KINDS)
    assert parse_kinds("none") == []
    assert parse_kinds("kill9, redis") == ["kill9", "redis"]
    with pytest.raises(ValueError, match="kill-9"):
        parse_kinds("kill-9")


def test_users_are_split_over_the_apis_and_their_messages_carry_tags():
    users = user_ids(4, BOTH)
    assert users == [("va-0000", "virtual_agent"), ("cn-0001", "connect"), ("va-0002", "virtual_agent"),
                     ("cn-0003", "connect")]
    assert parse_tag(user_text("va-0000", 1, 2)) == ("u", "va-0000", 1, 2)
    assert parse_tag(agent_text("cn-0001", 0, 4)) == ("a", "cn-0001", 0, 4)


def test_a_session_plan_is_consistent():
    for number in range(50):
        plan = session_plan(3, "va-0001", number)
        assert len(plan.user_gaps) == plan.user_messages >= 2
        assert len(plan.agent_gaps) == plan.agent_messages >= 2
        assert plan.closer in ("user", "agent")


def test_the_words_of_a_soak_message_never_trigger_the_demo_bots_keywords():
    # The demo bot's KeywordIntentClassifier (data/nlu.yml): a misrouted message must not start or end anything.
    words = {"hello", "hi", "hey", "hallo", "agent", "human", "mitarbeiter", "mensch", "deutsch", "german", "english",
             "englisch", "/end_chat"}
    phrases = ("live agent", "end chat", "chat beenden", "set language", "change language", "real person",
               "good morning", "guten tag")
    for number in range(24):
        for text in (user_text("va-0001", number, number, last=True), agent_text("va-0001", number, number)):
            said = text.lower().split(" ", 1)[1]
            assert not set(re.findall(r"[a-z/_]+", said)) & words, text
            assert not any(phrase in said for phrase in phrases), text
