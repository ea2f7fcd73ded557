"""The doctor says which Rasa it found, and what that Rasa refuses."""

import pytest

from connectors.servicenow.doctor.domain import check_domain
from connectors.servicenow.doctor.findings import Severity
from connectors.servicenow.doctor.rasa import check_rasa
from connectors.servicenow.rasa_glue.versions import IS_RASA_PRO, RASA_VERSION

from .conftest import demo_domain, write_domain


def test_the_doctor_names_the_installed_rasa(monkeypatch):
    monkeypatch.setenv("RASA_LICENSE", "set-but-not-read")
    finding = check_rasa()
    assert finding.severity is Severity.OK
    assert finding.message.startswith(f"{'Rasa Pro' if IS_RASA_PRO else 'Rasa'} {RASA_VERSION} on Python 3.")
    assert "set-but-not-read" not in finding.message


@pytest.mark.no_licence
@pytest.mark.skipif(not IS_RASA_PRO, reason="Rasa 3.6 has no licence")
def test_on_rasa_pro_a_missing_licence_is_a_warning(monkeypatch):
    monkeypatch.delenv("RASA_LICENSE", raising=False)
    monkeypatch.delenv("RASA_PRO_LICENSE", raising=False)
    finding = check_rasa()
    assert finding.severity is Severity.WARNING and "RASA_LICENSE" in finding.message


def test_a_language_slot_is_a_problem_only_where_rasa_refuses_it(tmp_path):
    domain = demo_domain()
    domain["slots"]["language"] = {"type": "text", "influence_conversation": False, "mappings": [{"type": "custom"}]}
    findings, _ = check_domain(write_domain(tmp_path, domain))
    refused = [f for f in findings if f.severity is Severity.PROBLEM and "'language'" in f.message]
    assert bool(refused) is IS_RASA_PRO


def test_controlled_mappings_leave_the_slots_to_the_channel(tmp_path):
    domain = demo_domain()
    domain["slots"]["live_chat_id"]["mappings"] = [{"type": "controlled"} if IS_RASA_PRO else {"type": "custom"}]
    domain["slots"]["live_chat_user"]["mappings"] = [{"type": "from_text"}]
    findings, _ = check_domain(write_domain(tmp_path, domain))
    slot_problems = [f.message for f in findings if f.severity is Severity.PROBLEM and f.topic == "domain"]
    assert [m for m in slot_problems if "live_chat_user" in m] and not [m for m in slot_problems if "live_chat_id" in m]
