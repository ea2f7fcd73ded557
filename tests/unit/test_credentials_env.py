"""``${VAR}`` in the channel's section of credentials.yml reads the same on
both Rasas, including the keys Rasa Pro leaves unexpanded (client_id,
client_secret: its SENSITIVE_DATA)."""

import pytest

from connectors.servicenow import ServiceNowInput
from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.errors import ConfigurationError
from connectors.servicenow.rasa_glue.versions import read_config_file

SECTION = """
connectors.servicenow.ServiceNowInput:
  instance_url: https://acme.service-now.com
  queue_id: q
  client_id: ${TEST_SN_CLIENT_ID}
  client_secret: ${TEST_SN_CLIENT_SECRET}
  username: ${TEST_SN_USERNAME}
  password: pa$word
"""


def settings_from(tmp_path) -> ServiceNowSettings:
    path = tmp_path / "credentials.yml"
    path.write_text(SECTION)
    # The door expands what Rasa Pro left as written, before the settings read the options.
    return ServiceNowInput.from_credentials(read_config_file(path)["connectors.servicenow.ServiceNowInput"]).settings


def test_variables_are_expanded_for_every_option(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_SN_CLIENT_ID", "the-client")
    monkeypatch.setenv("TEST_SN_CLIENT_SECRET", "the-secret")
    monkeypatch.setenv("TEST_SN_USERNAME", "rasa.integration")
    settings = settings_from(tmp_path)
    assert (settings.client_id, settings.client_secret, settings.username) == ("the-client", "the-secret", "rasa.integration")
    assert settings.password == "pa$word"


def test_empty_variables_mean_not_set(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_SN_CLIENT_ID", "")
    monkeypatch.setenv("TEST_SN_CLIENT_SECRET", "")
    monkeypatch.setenv("TEST_SN_USERNAME", "rasa.integration")
    settings = settings_from(tmp_path)
    assert settings.client_id is None and settings.client_secret is None and not settings.uses_oauth


def test_an_unset_variable_is_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("TEST_SN_CLIENT_ID", raising=False)
    monkeypatch.setenv("TEST_SN_CLIENT_SECRET", "s")
    monkeypatch.setenv("TEST_SN_USERNAME", "u")
    with pytest.raises(Exception) as refused:  # Rasa 3.6 refuses it reading the file, the channel on Rasa Pro
        settings_from(tmp_path)
    assert "TEST_SN_CLIENT_ID" in str(refused.value)
    if not isinstance(refused.value, ConfigurationError):
        from rasa.shared.exceptions import RasaException

        assert isinstance(refused.value, RasaException)
