import json

import pytest

from connectors.servicenow.payloads import MAX_BODY_BYTES, PayloadError, parse_user_payload


def parse(value, raw=False):
    body = value if raw else json.dumps(value).encode()
    return parse_user_payload(body, max_message_length=100)


def test_rest_channel_shape_is_accepted():
    payload = parse({"sender": "u1", "message": "  hi  ", "metadata": {"lang": "en"}})
    assert (payload.sender, payload.message, dict(payload.metadata)) == ("u1", "hi", {"lang": "en"})


def test_metadata_is_optional():
    assert dict(parse({"sender": "u1", "message": "hi"}).metadata) == {}


@pytest.mark.parametrize(
    "body, status, reason",
    [
        (b"not json", 400, "InvalidJSON"),
        (b"", 400, "InvalidJSON"),
        (b"\xff\xfe", 400, "InvalidEncoding"),  # a UTF-16 byte order mark: UTF-8 only
        (b"[1, 2]", 400, "InvalidPayload"),
        (json.dumps({"message": "hi"}).encode(), 400, "InvalidSender"),
        (json.dumps({"sender": 42, "message": "hi"}).encode(), 400, "InvalidSender"),
        (json.dumps({"sender": "x" * 256, "message": "hi"}).encode(), 400, "InvalidSender"),
        (json.dumps({"sender": "u1"}).encode(), 400, "InvalidMessage"),
        (json.dumps({"sender": "u1", "message": "   "}).encode(), 400, "InvalidMessage"),
        (json.dumps({"sender": "u1", "message": ["hi"]}).encode(), 400, "InvalidMessage"),
        (json.dumps({"sender": "u1", "message": "x" * 101}).encode(), 413, "MessageTooLong"),
        (json.dumps({"sender": "u1", "message": "hi", "metadata": "en"}).encode(), 400, "InvalidMetadata"),
        (b" " * (MAX_BODY_BYTES + 1), 413, "PayloadTooLarge"),
    ],
)
def test_bad_input_is_refused_with_a_4xx_and_a_reason(body, status, reason):
    with pytest.raises(PayloadError) as caught:
        parse(body, raw=True)
    assert caught.value.status == status
    assert caught.value.body()["reason"] == reason
    assert caught.value.body()["status"] == "failure"
