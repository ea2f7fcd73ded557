"""The doctor on where the emulator sends a Virtual Agent conversation's
messages: docs/install.md's first emulator command had none, and every agent
message was dropped ("not_configured") while the doctor said "0 problems"."""

from pathlib import Path
from typing import List

from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.doctor import Paths, diagnose
from connectors.servicenow.doctor.callback import check_callback
from connectors.servicenow.doctor.findings import Finding, Severity
from tests.e2e.harness import CallbackReceiver, FileServer, free_port

from .conftest import VA_WEBHOOK_SECRET, demo_domain, va_options, write_credentials, write_domain


async def doctor(tmp_path: Path, **overrides: object) -> List[Finding]:
    credentials = write_credentials(tmp_path, overrides.pop("options"))  # type: ignore[arg-type]
    return await diagnose(Paths(credentials, write_domain(tmp_path, demo_domain())))


def callback_findings(findings: List[Finding], severity: Severity) -> List[str]:
    return [f.message for f in findings if f.topic == "callback" and f.severity is severity]


async def test_an_emulator_without_a_callback_url_is_a_problem(tmp_path, instance):
    findings = await doctor(tmp_path, options=va_options(instance))
    (message,) = callback_findings(findings, Severity.PROBLEM)
    assert "no va_callback_url" in message
    fix = next(f.fix for f in findings if f.topic == "callback")
    assert "--set va_callback_url=" in fix


async def test_callback_headers_the_channel_refuses_are_a_problem_and_are_not_printed(tmp_path, instance):
    instance.configure(va_callback_url=f"http://127.0.0.1:{free_port()}/webhooks/servicenow/callback",
                       va_callback_auth={"X-Webhook-Secret": "not-the-channel-secret"})
    findings = await doctor(tmp_path, options=va_options(instance))
    (message,) = callback_findings(findings, Severity.PROBLEM)
    assert "would be refused with 401" in message
    assert all("not-the-channel-secret" not in f.message + f.fix and VA_WEBHOOK_SECRET not in f.message + f.fix
               for f in findings)


async def test_a_callback_url_elsewhere_than_the_channel_route_is_a_problem(tmp_path, instance):
    instance.configure(va_callback_url=f"http://127.0.0.1:{free_port()}/bot",
                       va_callback_auth={"X-Webhook-Secret": VA_WEBHOOK_SECRET})
    findings = await doctor(tmp_path, options=va_options(instance))
    (message,) = callback_findings(findings, Severity.PROBLEM)
    assert "not the channel's callback route" in message


async def test_basic_credentials_that_match_are_accepted(tmp_path, instance):
    instance.configure(va_callback_url=f"http://127.0.0.1:{free_port()}/webhooks/servicenow/callback",
                       va_callback_auth="basic:servicenow:a-basic-password-123")
    options = va_options(instance, webhook_secret=None, webhook_username="servicenow",
                         webhook_password="a-basic-password-123")
    findings = await doctor(tmp_path, options=options)
    assert callback_findings(findings, Severity.PROBLEM) == []
    (message,) = callback_findings(findings, Severity.OK)
    assert "nothing answers there yet" in message


async def test_a_callback_that_answers_is_said_so(tmp_path, instance):
    receiver = CallbackReceiver()
    try:
        url = receiver.url.rsplit("/", 1)[0] + "/webhooks/servicenow/callback"
        instance.configure(va_callback_url=url, va_callback_auth={"X-Webhook-Secret": VA_WEBHOOK_SECRET})
        findings = await doctor(tmp_path, options=va_options(instance))
    finally:
        receiver.stop()
    (message,) = callback_findings(findings, Severity.OK)
    assert "something answers there now" in message


async def test_a_real_instance_gets_the_setting_it_needs_spelled_out():
    # An instance that is not the emulator: no control plane (404), as ServiceNow.
    instance = FileServer({})
    try:
        settings = ServiceNowSettings.from_credentials(
            {"instance_url": instance.url, "api": "virtual_agent", "username": "u", "password": "p",
             "webhook_secret": VA_WEBHOOK_SECRET})
        (finding,) = await check_callback(settings)
    finally:
        instance.stop()
    assert finding.severity is Severity.OK
    assert "/webhooks/servicenow/callback" in finding.message and "REST message" in finding.message
