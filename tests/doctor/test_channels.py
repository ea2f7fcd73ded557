"""Other input channels beside one with ``jwt_key`` (security review: Rasa's
``rest:`` in the shipped credentials.yml let anyone ``/restart`` any user's
conversation while the ServiceNow channel required a token)."""

from pathlib import Path

import yaml

from connectors.servicenow.doctor import Paths, diagnose
from connectors.servicenow.doctor.channels import check_channels
from connectors.servicenow.doctor.findings import Severity

from .conftest import CHANNEL, ROOT

JWT = {"jwt_key": "a-jwt-key-of-some-length-0123456789"}
SOCKET_DOOR = "connectors.servicenow.ServiceNowSocketIOInput"



def test_rest_beside_the_channel_with_jwt_key_is_a_problem():
    (finding,) = check_channels({"rest": None, CHANNEL: {"instance_url": "https://x", **JWT}})
    assert finding.severity is Severity.PROBLEM
    assert "'rest'" in finding.message and "/restart" in finding.message and "Remove 'rest'" in finding.fix


def test_every_door_that_authenticates_nobody_is_named():
    credentials = {"callback": {"url": "http://x"}, "socketio": {"user_message_evt": "u"}, SOCKET_DOOR: {},
                   CHANNEL: JWT}
    found = check_channels(credentials)
    assert [f.severity for f in found] == [Severity.PROBLEM] * 3
    assert ["callback", "socketio", SOCKET_DOOR] == [f.message.split("'")[1] for f in found]


def test_a_jwt_door_beside_the_webhook_without_one_is_a_problem():
    (finding,) = check_channels({CHANNEL: {"instance_url": "https://x"}, SOCKET_DOOR: JWT})
    assert finding.severity is Severity.PROBLEM and f"'{CHANNEL}'" in finding.message


def test_platform_channels_pass_and_custom_ones_are_a_warning():
    found = check_channels({"facebook": {"secret": "s"}, "my_module.MyInput": {}, CHANNEL: JWT})
    assert [(f.severity, f.message.split("'")[1]) for f in found] == [(Severity.WARNING, "my_module.MyInput")]


def test_without_jwt_key_anywhere_nothing_is_a_problem():
    found = check_channels({"rest": None, CHANNEL: {"instance_url": "https://x"}})
    assert [f.severity for f in found] == [Severity.OK]
    assert check_channels({CHANNEL: JWT})[0].severity is Severity.OK


def test_the_shipped_credentials_carry_only_the_channel_the_demo_needs():
    assert list(yaml.safe_load((ROOT / "credentials.yml").read_text())) == [CHANNEL]
    assert list(yaml.safe_load((ROOT / "credentials-socketio.yml").read_text())) == [SOCKET_DOOR]


async def test_the_doctor_exits_1_for_rest_beside_jwt_key(tmp_path: Path):
    path = tmp_path / "credentials.yml"
    path.write_text(yaml.safe_dump({"rest": None, CHANNEL: {"instance_url": "https://x.service-now.com",
                                                            "username": "u", "password": "p" * 20,
                                                            "queue_id": "q", **JWT}}))
    findings = await diagnose(Paths(path), offline=True)
    assert [f.topic for f in findings if f.severity is Severity.PROBLEM] == ["channels"]
