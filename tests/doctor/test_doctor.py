"""The doctor against a real emulator and redis-server: good and broken
configurations, and the real command line as a subprocess."""

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import yaml

from connectors.servicenow.doctor import Paths, diagnose, exit_code
from connectors.servicenow.doctor.findings import Finding, Severity
from connectors.servicenow.rasa_glue.versions import IS_RASA_PRO

from .conftest import (
    CHANNEL,
    PASSWORD,
    ROOT,
    VA_WEBHOOK_SECRET,
    connect_options,
    demo_domain,
    va_options,
    write_credentials,
    write_domain,
)
from tests.e2e.harness import free_port


async def run(tmp_path: Path, options: dict, domain: Optional[dict] = None, endpoints: Optional[dict] = None,
              offline: bool = False) -> List[Finding]:
    credentials = write_credentials(tmp_path, options)
    domain_path = write_domain(tmp_path, domain if domain is not None else demo_domain())
    endpoints_path = None
    if endpoints is not None:
        endpoints_path = tmp_path / "endpoints.yml"
        endpoints_path.write_text(yaml.safe_dump(endpoints))
    return await diagnose(Paths(credentials, domain_path, endpoints_path), offline=offline)


def problems(findings: List[Finding], topic: Optional[str] = None) -> List[str]:
    return [f.message for f in findings if f.severity is Severity.PROBLEM and topic in (None, f.topic)]


def warnings_(findings: List[Finding], topic: Optional[str] = None) -> List[str]:
    return [f.message for f in findings if f.severity is Severity.WARNING and topic in (None, f.topic)]


def oks(findings: List[Finding], topic: str) -> List[str]:
    return [f.message for f in findings if f.severity is Severity.OK and f.topic == topic]


def one(messages: List[str], fragment: str) -> str:
    matching = [message for message in messages if fragment in message]
    assert len(matching) == 1, f"{fragment!r} not once in {messages}"
    return matching[0]


# -- good configurations -------------------------------------------------------


async def test_a_good_connect_setup_has_no_problem(tmp_path, instance):
    findings = await run(tmp_path, connect_options(instance), endpoints={"tracker_store": {"type": "sql"}})
    assert problems(findings) == [] and warnings_(findings) == []
    assert exit_code(findings) == 0
    one(oks(findings, "instance"), "with the Basic credentials")
    one(oks(findings, "instance"), "Connect queue 'IT Support' (queue_id) exists")
    one(oks(findings, "instance"), "No rate-limit headers")
    # five slots, the hand-back intent, the responses that start and that end a handoff, the texts the domain says
    assert len(oks(findings, "domain")) == 9


async def test_a_good_virtual_agent_setup_with_oauth_and_message_auth(tmp_path, instance):
    callback = f"http://127.0.0.1:{free_port()}/webhooks/servicenow/callback"
    instance.configure(va_hash_secret="hash-secret-xyz", va_static_token="static-token-xyz",
                       va_provider_applications={"rasa-bot": "Rasa bot provider"},
                       va_callback_url=callback, va_callback_auth={"X-Webhook-Secret": VA_WEBHOOK_SECRET})
    options = va_options(instance, message_hash_secret="hash-secret-xyz", message_token="static-token-xyz",
                         app_inbound_id="rasa-bot")
    findings = await run(tmp_path, options, endpoints={"tracker_store": {"type": "sql"}})
    assert problems(findings) == [], findings
    one(oks(findings, "instance"), "accepted the Message Auth token/signature and the OAuth token")
    one(oks(findings, "instance"), "Provider application 'Rasa bot provider' has the Inbound Id rasa-bot")
    one(oks(findings, "instance"), "Reconciliation can read interaction and sys_cs_message")
    one(oks(findings, "callback"), f"sends Virtual Agent messages to {callback} with headers the channel accepts")
    # The probe started no conversation.
    assert instance.get("sessions")["sessions"] == []


# -- broken configurations ---------------------------------------------------


async def test_a_wrong_password_is_a_problem_and_is_not_printed(tmp_path, instance):
    findings = await run(tmp_path, connect_options(instance, password="not-the-password"))
    one(problems(findings, "instance"), "refused the Basic credentials")
    assert exit_code(findings) == 1
    assert all("not-the-password" not in f.message + f.fix for f in findings)


async def test_a_wrong_oauth_secret_is_a_problem(tmp_path, instance):
    findings = await run(tmp_path, va_options(instance, client_secret="wrong-oauth-secret"))
    one(problems(findings, "instance"), "refused the OAuth token")


async def test_a_wrong_queue_names_the_queues_the_user_can_see(tmp_path, instance):
    findings = await run(tmp_path, connect_options(instance, queue_id="0123456789abcdef0123456789abcdef"))
    message = one(problems(findings, "instance"), "0123456789abcdef0123456789abcdef (queue_id) is not among")
    assert "IT Support" in message


async def test_an_unavailable_queue_is_a_warning(tmp_path, instance):
    instance.configure(connect_queues={instance.queue_id: {"name": "IT Support", "agents": [], "not_available": "closed"}})
    findings = await run(tmp_path, connect_options(instance))
    one(warnings_(findings, "instance"), "exists but is not available")
    assert exit_code(findings) == 0


async def test_a_handoff_response_with_an_unknown_queue_is_a_problem(tmp_path, instance):
    domain = demo_domain()
    domain["responses"]["utter_handoff_hr"] = [{"custom": {"handoff": {"queue_id": "feedfeedfeedfeedfeedfeedfeedfeed"}}}]
    findings = await run(tmp_path, connect_options(instance), domain=domain)
    one(problems(findings, "instance"), "feedfeedfeedfeedfeedfeedfeedfeed (a handoff response's queue_id) is not among")


async def test_an_unknown_option_is_named_with_a_suggestion_and_the_instance_is_left_alone(tmp_path, instance):
    findings = await run(tmp_path, connect_options(instance, poll_intervall=2))
    one(problems(findings, "options"), "Unknown option 'poll_intervall' (did you mean 'poll_interval'?)")
    one(warnings_(findings, "instance"), "Not contacted")
    assert instance.get("requests")["requests"] == []


async def test_an_invalid_secret_value_is_reported_without_the_value(tmp_path, instance):
    findings = await run(tmp_path, connect_options(instance, password=["a-list-password"]))
    one(problems(findings, "options"), "Invalid value for 'password'")
    assert all("a-list-password" not in f.message for f in findings)


async def test_the_doctor_says_whether_posts_to_callback_url_are_signed(tmp_path, instance):
    signed = await run(tmp_path, connect_options(instance))
    one(oks(signed, "options"), "callback_secret is set")
    unsigned = await run(tmp_path, connect_options(instance, callback_secret=None))
    fix = next(f.fix for f in unsigned if "callback_url without callback_secret" in f.message)
    assert "python -m connectors.servicenow.signing" in fix
    bad = await run(tmp_path, connect_options(instance, callback_secret="not-a-whsec-secret"))
    one(problems(bad, "options"), "Invalid value for 'callback_secret'")
    assert all("not-a-whsec-secret" not in f.message for f in bad)


async def test_virtual_agent_without_a_webhook_secret_is_a_problem(tmp_path, instance):
    findings = await run(tmp_path, va_options(instance, webhook_secret=None))
    one(problems(findings, "options"), "'api: virtual_agent' needs the callback secured")


async def test_a_wrong_message_auth_secret_is_a_problem(tmp_path, instance):
    instance.configure(va_hash_secret="the-real-hash-secret")
    findings = await run(tmp_path, va_options(instance, message_hash_secret="a-wrong-hash-secret"))
    finding = next(f for f in findings if f.severity is Severity.PROBLEM)
    assert "x-b2b-signature" in finding.message and "message_hash_secret" in finding.fix
    assert "a-wrong-hash-secret" not in finding.message + finding.fix


async def test_an_unknown_provider_application_is_a_problem(tmp_path, instance):
    instance.configure(va_provider_applications={"rasa-bot": "Rasa bot provider"})
    findings = await run(tmp_path, va_options(instance, app_inbound_id="other-bot"))
    one(problems(findings, "instance"), "No provider application has the Inbound Id other-bot")


async def test_tables_reconciliation_may_not_read_are_a_warning_that_names_the_role(tmp_path, instance):
    instance.configure(table_read_access=["sys_user", "interaction"])
    findings = await run(tmp_path, va_options(instance), endpoints={"tracker_store": {"type": "sql"}})
    assert problems(findings, "instance") == []
    message = one(warnings_(findings, "instance"), "may not read sys_cs_message (HTTP 403)")
    assert "interaction and" not in message
    fix = next(f.fix for f in findings if f.message == message)
    assert "interaction_agent" in fix and "reconcile: false" in fix
    assert not [m for m in oks(findings, "instance") if "Reconciliation" in m]


async def test_with_reconciliation_off_the_tables_are_not_checked(tmp_path, instance):
    instance.configure(table_read_access=["sys_user"])
    findings = await run(tmp_path, va_options(instance, reconcile=False))
    assert not [f for f in findings if "sys_cs_message" in f.message]


async def test_a_tight_rate_limit_for_reconciliation_is_a_warning(tmp_path, instance):
    instance.fault(per_user_per_hour=100, scope="all")
    findings = await run(tmp_path, va_options(instance, reconcile_interval=30))
    message = one(warnings_(findings, "instance"), "A rate-limit rule covers this user: 100 requests per hour")
    assert "Reconciling every 30 s costs at least 120 requests per hour per live chat" in message


async def test_an_unreachable_instance_is_a_problem(tmp_path, instance):
    findings = await run(tmp_path, connect_options(instance, instance_url=f"http://127.0.0.1:{free_port()}"))
    one(problems(findings, "instance"), "Could not reach http://127.0.0.1:")


async def test_a_missing_api_route_is_a_problem(tmp_path, instance):
    # The emulator answers like ServiceNow for a path no API serves: 400 "Requested URI does not represent any resource".
    options = va_options(instance, instance_url=instance.url + "/not-an-instance", client_id=None, client_secret=None,
                         username="rasa.integration", password=PASSWORD)
    findings = await run(tmp_path, options)
    one(problems(findings, "instance"), "the Virtual Agent API (sn_va_as_service) is not installed")


async def test_rate_limit_headers_are_read_and_a_tight_limit_for_polling_is_a_warning(tmp_path, instance):
    instance.fault(per_user_per_hour=1000, scope="connect")
    findings = await run(tmp_path, connect_options(instance))
    message = one(warnings_(findings, "instance"), "A rate-limit rule covers this user: 1000 requests per hour")
    assert "3600 requests per hour per active chat" in message


async def test_an_unset_environment_variable_is_a_problem_as_in_rasa_run(tmp_path, instance, monkeypatch):
    monkeypatch.delenv("DOCTOR_TEST_PASSWORD", raising=False)
    findings = await run(tmp_path, connect_options(instance, password="${DOCTOR_TEST_PASSWORD}"))
    one(problems(findings, "credentials"), "DOCTOR_TEST_PASSWORD")
    monkeypatch.setenv("DOCTOR_TEST_PASSWORD", PASSWORD)
    findings = await run(tmp_path, connect_options(instance, password="${DOCTOR_TEST_PASSWORD}"))
    assert problems(findings) == []


async def test_a_missing_channel_section_is_a_problem(tmp_path):
    path = tmp_path / "credentials.yml"
    path.write_text("rest:\nconnectors.servicenow.ServiceNowInputs:\n  instance_url: https://x\n")
    findings = await diagnose(Paths(path))
    message = one(problems(findings, "credentials"), f"has no '{CHANNEL}' section")
    assert "connectors.servicenow.ServiceNowInputs" in message


async def test_the_socketio_section_alone_is_checked_with_its_socketio_options(tmp_path):
    path = tmp_path / "credentials.yml"
    path.write_text(
        "connectors.servicenow.ServiceNowSocketIOInput:\n  instance_url: https://x.service-now.com\n"
        "  username: u\n  password: averyveryverylongpassword\n  queue_id: q1\n  socketio_path: no-slash\n"
    )
    findings = await diagnose(Paths(path), offline=True)
    one(problems(findings, "options"), "socketio_path")
    assert not [message for message in problems(findings, "options") if "Unknown option" in message]

    path.write_text(path.read_text().replace("socketio_path: no-slash", "user_message_evt: user_uttered"))
    findings = await diagnose(Paths(path), offline=True)
    one(oks(findings, "options"), "socket.io door accepts its options")
    one(warnings_(findings, "options"), "session_persistence is off")

    both = path.read_text() + path.read_text().replace("ServiceNowSocketIOInput", "ServiceNowInput").replace(
        "  user_message_evt: user_uttered\n", ""
    )
    path.write_text(both)
    findings = await diagnose(Paths(path), offline=True)
    assert not [m for m in warnings_(findings, "options") if "different ServiceNow options" in m]
    path.write_text(both.replace("queue_id: q1", "queue_id: q2", 1))
    findings = await diagnose(Paths(path), offline=True)
    one(warnings_(findings, "options"), "different ServiceNow options")


# -- the domain -------------------------------------------------------------------


async def test_domain_slot_mistakes(tmp_path, instance):
    domain = demo_domain()
    del domain["slots"]["live_chat_seen_ids"]
    domain["slots"]["live_chat_id"]["influence_conversation"] = True
    domain["slots"]["live_chat_user"]["mappings"] = [{"type": "from_text"}]
    domain["slots"]["handoff_active"] = {"type": "text", "influence_conversation": False, "mappings": [{"type": "custom"}]}
    domain["session_config"]["carry_over_slots_to_new_session"] = False
    findings = await run(tmp_path, connect_options(instance), domain=domain, offline=True)
    domain_problems = problems(findings, "domain")
    one(domain_problems, "Slot 'live_chat_seen_ids' is missing")
    one(domain_problems, "Slot 'handoff_active' has type text")
    one(domain_problems, "Slot 'live_chat_user' has mapping(s) from_text")
    one(warnings_(findings, "domain"), "Slot 'live_chat_id' influences the conversation")
    one(warnings_(findings, "domain"), "carry_over_slots_to_new_session is false")
    fix = next(f.fix for f in findings if "live_chat_seen_ids' is missing" in f.message)
    assert "live_chat_seen_ids: {type: any" in fix


async def test_a_domain_without_a_handoff_response_is_a_problem(tmp_path, instance):
    domain = demo_domain()
    del domain["responses"]["utter_handoff"]
    findings = await run(tmp_path, connect_options(instance), domain=domain, offline=True)
    one(problems(findings, "domain"), "No response has the 'handoff' custom payload")


async def test_the_texts_the_domain_says_are_listed_and_a_misspelt_one_is_a_warning(tmp_path, instance):
    domain = demo_domain()
    domain["responses"]["utter_servicenow_agent_closd"] = [{"text": "Bye."}]
    findings = await run(tmp_path, connect_options(instance), domain=domain, offline=True)
    said = one(oks(findings, "domain"), "The domain says these channel texts")
    assert "connecting" in said and "agent_closed" in said and "agent_closd" not in said
    typo = one(warnings_(findings, "domain"), "'utter_servicenow_agent_closd' names no text")
    fix = next(f.fix for f in findings if f.message == typo)
    assert fix.startswith("Did you mean utter_servicenow_agent_closed?")
    assert exit_code(findings) == 0


async def test_a_messages_entry_that_an_unconditional_response_overrides_is_a_warning(tmp_path, instance):
    domain = demo_domain()
    domain["responses"]["utter_servicenow_agent_closed"].append({"text": "The agent left."})
    options = connect_options(instance, messages={"agent_closed": "Bye.", "connecting": "Wait."})
    findings = await run(tmp_path, options, domain=domain, offline=True)
    one(warnings_(findings, "domain"), "'messages.agent_closed' is never said")
    # utter_servicenow_connecting has only a German variation: the option is said in English.
    assert not [m for m in warnings_(findings, "domain") if "messages.connecting" in m]


# -- stores -------------------------------------------------------------------


async def test_redis_url_is_pinged_with_its_password_masked(tmp_path, instance, redis_server):
    options = connect_options(instance, redis_url=redis_server.url("redis-pass-123"))
    findings = await run(tmp_path, options)
    message = one(oks(findings, "redis"), "answers PING")
    assert "redis-pass-123" not in message and ":***@" in message
    wrong = await run(tmp_path, connect_options(instance, redis_url=redis_server.url("wrong-redis-pass")))
    assert one(problems(wrong, "redis"), "refused")
    assert all("wrong-redis-pass" not in f.message + f.fix for f in wrong)
    down = await run(tmp_path, connect_options(instance, redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    one(problems(down, "redis"), "cannot reach Redis")


async def test_endpoints_redis_stores_are_pinged_and_memory_is_a_warning(tmp_path, instance, redis_server):
    store = {"type": "redis", "url": "127.0.0.1", "port": redis_server.port, "password": "redis-pass-123"}
    findings = await run(tmp_path, connect_options(instance), endpoints={"tracker_store": store, "lock_store": store},
                         offline=True)
    assert len([m for m in oks(findings, "endpoints") if "answers PING" in m]) == 2
    in_memory = await run(tmp_path, connect_options(instance), endpoints={"action_endpoint": {"url": "http://x"}},
                          offline=True)
    one(warnings_(in_memory, "endpoints"), "Tracker store in memory")


# -- the command line ---------------------------------------------------------


def doctor(*args: str, cwd: Path, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "connectors.servicenow.doctor", *args],
        cwd=cwd, capture_output=True, text=True, timeout=180,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def test_cli_passes_with_warnings_only_and_fails_on_a_problem(tmp_path, instance):
    # Defaults: credentials.yml and domain.yml of the working directory; no endpoints.yml (a warning).
    write_credentials(tmp_path, connect_options(instance, password="${DOCTOR_PASSWORD}"))
    write_domain(tmp_path, demo_domain())
    good = doctor(cwd=tmp_path, env={"DOCTOR_PASSWORD": PASSWORD})
    assert good.returncode == 0, good.stdout + good.stderr
    assert "Connect queue 'IT Support' (queue_id) exists" in good.stdout
    assert "warning  endpoints" in good.stdout and "0 problem(s)" in good.stdout
    assert good.stderr == ""

    bad = doctor("--credentials", "credentials.yml", "--domain", "domain.yml", cwd=tmp_path,
                 env={"DOCTOR_PASSWORD": "cli-wrong-password"})
    assert bad.returncode == 1
    assert "PROBLEM  instance" in bad.stdout and "refused the Basic credentials" in bad.stdout
    assert "cli-wrong-password" not in bad.stdout + bad.stderr
    # As a word: option names such as callback_secret may contain the emulator's password "secret".
    assert not re.search(rf"\b{re.escape(PASSWORD)}\b", good.stdout + bad.stdout)


def test_cli_with_the_shipped_files(instance):
    env = {
        "SERVICENOW_INSTANCE_URL": instance.url, "SERVICENOW_API": "connect", "SERVICENOW_USERNAME": "rasa.integration",
        "SERVICENOW_PASSWORD": PASSWORD, "SERVICENOW_QUEUE_ID": instance.queue_id,
    }
    for name in ("CLIENT_ID", "CLIENT_SECRET", "CALLBACK_URL", "POLL_INTERVAL", "WEBHOOK_SECRET", "CHAT_PAGE", "LOG_FORMAT", "REDIS_URL"):
        env[f"SERVICENOW_{name}"] = ""
    # The shipped project of the installed Rasa: the NLU-based demo, or on Rasa Pro the CALM example.
    project = ROOT / "examples" / "calm" if IS_RASA_PRO else ROOT
    result = doctor(cwd=project, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Response(s) that start a handoff: utter_handoff" in result.stdout


async def test_waiting_options_that_cannot_work_as_meant_are_warnings(tmp_path, instance):
    hours = {"timezone": "UTC", "mon": "00:00-24:00", "closed_dates": []}
    options = connect_options(
        instance, agent_wait_timeout=60, waiting_notice_interval=90, user_idle_timeout=20, business_hours=hours
    )
    findings = await run(tmp_path, options, offline=True)
    one(warnings_(findings, "options"), "the chat is left before the first notice")
    one(warnings_(findings, "options"), "user_idle_timeout is 20 s")
    one(oks(findings, "options"), "business_hours in UTC:")
    assert problems(findings) == []
def test_a_domain_without_the_hand_back_intent_gets_a_warning_not_a_problem(tmp_path):
    from connectors.servicenow.doctor.domain import check_domain

    domain = tmp_path / "domain.yml"
    domain.write_text(
        "version: '3.1'\nintents: [greet]\nresponses:\n  utter_handoff:\n    - custom:\n        handoff: {}\n"
    )
    findings, _ = check_domain(domain, "connect", handback_intent="handoff_ended")
    [finding] = [f for f in findings if "handback_intent" in f.message]
    assert finding.severity.value == "warning"
    assert "no turn when a handoff ends" in finding.message


def test_cli_prints_the_report_and_nothing_else(tmp_path, instance):
    """A new user's first line was a DeprecationWarning, in a ``rasa init``
    project: its endpoints.yml (all comments) makes the doctor import Rasa's
    stores, after Sanic has turned every DeprecationWarning back on."""
    write_credentials(tmp_path, va_options(instance))
    (tmp_path / "endpoints.yml").write_text("# This file contains the different endpoints your bot can use.\n")
    result = doctor("--offline", cwd=tmp_path)
    assert result.stderr == ""
    # The report's first line says which Rasa it found; the second is the first file it read.
    first, second = result.stdout.splitlines()[:2]
    assert first.startswith("ok       rasa ") and second.startswith("ok       credentials"), result.stdout[:300]


async def test_replicas_on_rasas_redis_lock_store_are_warned_and_the_atomic_one_is_ok(tmp_path, instance, redis_server):
    # Soak finding 6: with redis_url the replicas share conversations, and
    # Rasa's RedisLockStore loses tickets when two of them race.
    replicas = connect_options(instance, redis_url=redis_server.url("redis-pass-123"))
    where = {"url": "127.0.0.1", "port": redis_server.port, "password": "redis-pass-123"}
    racy = await run(tmp_path, replicas, endpoints={"lock_store": {"type": "redis", **where}}, offline=True)
    message = one(warnings_(racy, "endpoints"), "Rasa's Redis lock store")
    assert "replicas" in message
    atomic = {"type": "connectors.servicenow.rasa_glue.lock_store.AtomicRedisLockStore", **where}
    safe = await run(tmp_path, replicas, endpoints={"lock_store": atomic}, offline=True)
    assert not [m for m in warnings_(safe, "endpoints") if "lock store" in m.lower()]
    one(oks(safe, "endpoints"), "safe across replicas")
    assert len([m for m in oks(safe, "endpoints") if "answers PING" in m]) == 1
    one(warnings_(await run(tmp_path, replicas, endpoints={}, offline=True), "endpoints"), "locks conversations for itself")
    single = await run(tmp_path, connect_options(instance), endpoints={"lock_store": {"type": "redis", **where}}, offline=True)
    assert not [m for m in warnings_(single, "endpoints") if "lock store" in m.lower()], "one replica: Rasa's is fine"
