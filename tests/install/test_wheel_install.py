"""What the wheel holds: the connector, its doctor, its emulator and the
reference chat page, and none of the demo bot; and what it requires. The
wheel installed into a fresh project, by the steps of docs/install.md:
``test_install_guide.py``."""

import re
import zipfile

import pytest

pytestmark = pytest.mark.install


def test_the_wheel_holds_the_connector_and_the_emulator_and_nothing_of_the_demo(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    packages = {name.rsplit("/", 1)[0] for name in names if not name.startswith("rasa_servicenow_handoff-")}
    assert packages == {
        "connectors",
        "connectors/servicenow",
        "connectors/servicenow/core",
        "connectors/servicenow/doctor",
        "connectors/servicenow/doors",
        "connectors/servicenow/emulator",
        "connectors/servicenow/emulator/console",
        "connectors/servicenow/ops",
        "connectors/servicenow/outbox",
        "connectors/servicenow/outbox/sinks",
        "connectors/servicenow/rasa_glue",
        "connectors/servicenow/servicenow",
        "connectors/servicenow/store",
        "connectors/servicenow/webchat",
    }
    for needed in ("connectors/servicenow/webchat/index.html", "connectors/servicenow/emulator/__main__.py",
                   "connectors/servicenow/emulator/console/index.html", "connectors/servicenow/doctor/__main__.py"):
        assert needed in names
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("/METADATA"))).decode()
    required = sorted(re.findall(r"^Requires-Dist: ([\w-]+)(?!.*extra ==)", metadata, re.M))
    # docs/install.md, "Install", names each: no Rasa of its own (the project's stays), ...
    assert required == ["prometheus-client"], metadata
    # ... and an extra for each Rasa (docs/rasa-pro.md).
    assert re.search(r"^Requires-Dist: rasa ?<3\.7,>=3\.6 ?; extra == .rasa.$", metadata, re.M), metadata
    assert re.search(r"^Requires-Dist: rasa-pro ?<4,>=3\.18 ?; extra == .rasa-pro.$", metadata, re.M), metadata
