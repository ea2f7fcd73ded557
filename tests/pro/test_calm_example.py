"""examples/calm as Rasa Pro reads it, without training (which needs a
licence): Rasa Pro's own importer gives the domain (with its built-in
``language`` slot) and the flows, whose ``pattern_human_handoff`` is the
example's, sending the ``handoff`` payload."""

from pathlib import Path

import pytest

from connectors.servicenow.rasa_glue.versions import IS_RASA_PRO
from connectors.servicenow.rasa_glue.slots import HANDOFF_SLOTS

pytestmark = pytest.mark.skipif(not IS_RASA_PRO, reason="a CALM project needs Rasa Pro")

ROOT = Path(__file__).resolve().parents[2]
CALM = ROOT / "examples" / "calm"


def importer(project: Path):
    from rasa.shared.importers.importer import TrainingDataImporter

    return TrainingDataImporter.load_from_config(
        str(project / "config.yml"), str(project / "domain.yml"), [str(project / "data")]
    )


def test_the_calm_example_reads_as_a_rasa_pro_project():
    project = importer(CALM)
    domain = project.get_domain()
    declared = {slot.name for slot in domain.slots}
    assert set(HANDOFF_SLOTS) <= declared and "language" in declared  # the built-in one
    assert domain.responses["utter_handoff"] == [{"custom": {"handoff": {}}}]
    assert "handoff_ended" in domain.intents

    flows = project.get_flows()
    flows.validate()
    pattern = flows.flow_by_id("pattern_human_handoff")
    assert [getattr(step, "action", None) for step in pattern.steps][:2] == ["action_handoff_metric", "utter_handoff"]
    triggers = {flow.id: flow.nlu_triggers for flow in flows.underlying_flows if flow.nlu_triggers}
    assert {"talk_to_a_human", "handoff_ended"} <= set(triggers)


def test_rasa_pro_refuses_a_domain_with_its_own_language_slot():
    """Why the NLU-based demo (domain.yml at the root, Rasa 3.6) is not a Rasa
    Pro project as it is, and the CALM example declares no such slot."""
    from rasa.shared.exceptions import RasaException

    with pytest.raises(RasaException, match="'language' slot is a builtin slot"):
        importer(ROOT).get_domain()
