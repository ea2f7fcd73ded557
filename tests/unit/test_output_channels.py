"""The doors' output channels as Rasa Pro 3.21 uses them: its base class keeps
response-delivery queues made in ``OutputChannel.__init__`` (``action_hangup``
awaits ``wait_for_response_deliveries()``), ``send_response`` returns an
optional delivery result, and a channel that does not declare streaming gets
whole messages, never chunks."""

from types import SimpleNamespace

import pytest

from rasa.core.channels.channel import OutputChannel

from connectors.servicenow import ServiceNowInput
from connectors.servicenow.rasa_glue.output import TurnCollector

OPTIONS = {"instance_url": "https://acme.service-now.com", "username": "u", "password": "p", "queue_id": "q"}


@pytest.fixture
def outputs():
    channel = ServiceNowInput.from_credentials({**OPTIONS, "redis_prefix": "outputs:"})
    channel.bind(SimpleNamespace(ctx=SimpleNamespace()))
    return [TurnCollector(), channel.get_output_channel()]


@pytest.mark.skipif(
    not hasattr(OutputChannel, "wait_for_response_deliveries"),
    reason="this Rasa's OutputChannel has no delivery queues (Rasa Pro 3.21 has)",
)
async def test_the_outputs_are_initialised_as_rasa_pro_outputs(outputs):
    for output in outputs:
        await output.wait_for_response_deliveries()  # what action_hangup awaits: needs OutputChannel.__init__
        await output.shutdown_response_deliveries()
        assert output.supports_streaming is False  # whole messages: the handoff payload is never split


async def test_send_response_collects_and_returns_no_delivery_result():
    collector = TurnCollector()
    result = await collector.send_response("u1", {"text": "One moment.", "custom": {"handoff": {"message": "VPN"}}})
    assert not result  # None on Rasa 3.6; None (an empty OutputDeliveryResult is falsy too) on Rasa Pro
    assert collector.messages == [{"recipient_id": "u1", "text": "One moment."}]
    assert collector.handoff == {"message": "VPN"}
