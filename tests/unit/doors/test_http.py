"""What the doors' routes share: checking ServiceNow's callback credentials
(in constant time, whatever bytes a header holds)."""

import base64

import pytest

from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.doors.http import callback_authorized

OPTIONS = {
    "instance_url": "https://acme.service-now.com", "api": "virtual_agent", "username": "bot", "password": "pw",
    "webhook_secret": "s3cret", "context_variables": {"b2b_category": "it"}, "language": "en",
}


def test_callback_credentials_are_checked():
    secret_only = ServiceNowSettings.from_credentials(OPTIONS)
    assert callback_authorized(secret_only, {"X-Webhook-Secret": "s3cret"})
    assert not callback_authorized(secret_only, {"X-Webhook-Secret": "wrong"})
    assert not callback_authorized(secret_only, {})
    basic = ServiceNowSettings.from_credentials(
        {**OPTIONS, "webhook_secret": "", "webhook_username": "servicenow", "webhook_password": "pw"}
    )
    good = "Basic " + base64.b64encode(b"servicenow:pw").decode()
    bad = "Basic " + base64.b64encode(b"servicenow:nope").decode()
    assert callback_authorized(basic, {"Authorization": good})
    assert not callback_authorized(basic, {"Authorization": bad})
    assert not callback_authorized(basic, {"Authorization": "Basic !!!"})


@pytest.mark.parametrize("value", ["\udcff\udcfe", "s3cret\udc80", "é", "\ud800", "s3cret\x00"])
def test_callback_credentials_with_bytes_that_are_not_utf8_are_refused_not_a_crash(value):
    # Sanic hands over non-UTF-8 header bytes as lone surrogates.
    secret_only = ServiceNowSettings.from_credentials(OPTIONS)
    assert not callback_authorized(secret_only, {"X-Webhook-Secret": value})
    basic = ServiceNowSettings.from_credentials(
        {**OPTIONS, "webhook_secret": "", "webhook_username": "servicenow", "webhook_password": "pw"}
    )
    assert not callback_authorized(basic, {"Authorization": "Basic " + value})
    encoded = base64.b64encode(("servicenow:pw" + value).encode("utf-8", "surrogatepass")).decode()
    assert not callback_authorized(basic, {"Authorization": "Basic " + encoded})
