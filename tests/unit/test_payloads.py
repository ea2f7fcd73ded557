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


# -- encodings and JSON that cannot travel on ---------------------------------

from connectors.servicenow.payloads import (  # noqa: E402
    MAX_JSON_DEPTH,
    decode_json,
    is_valid_sender,
    parse_sender,
    parse_typing_payload,
)

VALID = '{"sender": "u1", "message": "hi"}'


def refused(body: bytes) -> PayloadError:
    with pytest.raises(PayloadError) as caught:
        parse(body, raw=True)
    return caught.value


def test_a_leading_utf8_byte_order_mark_is_tolerated():
    assert parse(b"\xef\xbb\xbf" + VALID.encode(), raw=True).message == "hi"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"])
def test_other_unicode_encodings_are_refused_not_guessed(encoding):
    error = refused(VALID.encode(encoding))
    assert (error.status, error.reason) == (400, "InvalidEncoding")


@pytest.mark.parametrize("body", [
    b'{"sender": "u\xe9", "message": "hi"}',  # latin-1
    b'{"sender": "u1", "message": "\xff\xfe"}',
    b'{"sender": "u1", "message": "\xed\xa0\x80"}',  # a surrogate encoded as UTF-8 bytes
    b'{"sender": "u1", "message": "\xc3"}',  # truncated sequence
])
def test_invalid_utf8_is_refused(body):
    assert refused(body).reason == "InvalidEncoding"


@pytest.mark.parametrize("body", [
    '{"sender": "u1", "message": "\\ud800"}',
    '{"sender": "u1", "message": "hi \\udfff"}',
    '{"sender": "u1", "message": "hi", "metadata": {"\\udc80": 1}}',
    '{"sender": "u1", "message": "hi", "metadata": {"a": [["\\ud83d"]]}}',
])
def test_lone_surrogates_anywhere_are_refused(body):
    error = refused(body.encode())
    assert (error.status, error.reason) == (400, "InvalidText")


def test_an_escaped_surrogate_pair_is_one_character_and_fine():
    assert parse(b'{"sender": "u1", "message": "\\ud83d\\ude00"}', raw=True).message == "\U0001F600"


@pytest.mark.parametrize("depth, ok", [(MAX_JSON_DEPTH, True), (MAX_JSON_DEPTH + 1, False), (30_000, False)])
def test_nesting_is_bounded_without_a_recursion_error(depth, ok):
    body = b'{"sender": "u1", "message": "hi", "metadata": {"a": ' + b"[" * (depth - 2) + b"]" * (depth - 2) + b"}}"
    if ok:
        assert parse(body, raw=True).sender == "u1"
    else:
        assert refused(body).reason == "InvalidJSON"


def test_a_deep_top_level_array_is_refused_without_a_recursion_error():
    with pytest.raises(PayloadError) as caught:
        decode_json(b"[" * 60_000)
    assert caught.value.status == 400


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"1" * 4301])
def test_numbers_python_reads_but_json_does_not_carry_are_refused(number):
    body = b'{"sender": "u1", "message": "hi", "metadata": {"n": ' + number + b"}}"
    assert refused(body).reason == "InvalidJSON"


def test_a_large_but_legal_integer_is_kept():
    body = b'{"sender": "u1", "message": "hi", "metadata": {"n": ' + b"9" * 4300 + b"}}"
    assert parse(body, raw=True).metadata["n"] > 10**4299


@pytest.mark.parametrize("message", ["a\x00b", "bell\x07", "\x1b[2J", "del\x7f"])
def test_control_characters_in_a_message_are_refused_before_anything_is_sent(message):
    error = refused(json.dumps({"sender": "u1", "message": message}).encode())
    assert (error.status, error.reason) == (400, "InvalidMessage")


def test_tabs_and_line_breaks_are_text():
    assert parse({"sender": "u1", "message": "one\ttwo\r\nthree"}).message == "one\ttwo\r\nthree"


# -- senders --------------------------------------------------------------------


@pytest.mark.parametrize("sender", ["u1", "a" * 255, "user@example.com", "é-ü-中文", "a b", "\U0001F600"])
def test_sender_accepts_any_printable_id(sender):
    assert parse_sender(sender) == sender
    assert is_valid_sender(sender)


@pytest.mark.parametrize("sender", [
    None, 42, True, ["u1"], {"id": "u1"}, "", "   ", "a" * 256, " u1", "u1 ", "u1\n", "a\nb", "a\x00", "a\x1b[31m",
    "a\x7f", "a\x85", "a\u2028b", "a\ud800",
])
def test_sender_refuses_empty_long_padded_or_control_ids(sender):
    with pytest.raises(PayloadError) as caught:
        parse_sender(sender)
    assert (caught.value.status, caught.value.reason) == (400, "InvalidSender")
    assert not is_valid_sender(sender)


def test_typing_uses_the_same_sender_rules():
    with pytest.raises(PayloadError) as caught:
        parse_typing_payload(json.dumps({"sender": "a\nb", "typing": True}).encode())
    assert caught.value.reason == "InvalidSender"
