"""python-socketio's packets decoded by the webhook's rules (socket_server.ScreenedPacket)."""

from socketio import packet

from connectors.servicenow.doors.socket_server import REFUSED_AUTH, REFUSED_INPUT_EVT, ScreenedPacket, refused_input


def test_a_packet_within_the_rules_decodes_as_before():
    decoded = ScreenedPacket(encoded_packet='2["user_uttered",{"message":"hi","n":1.5}]')
    assert (decoded.packet_type, decoded.data) == (packet.EVENT, ["user_uttered", {"message": "hi", "n": 1.5}])


def test_a_deep_or_non_finite_event_becomes_a_refusal_not_an_exception():
    for text, reason in (('{"a":' * 5000 + "1" + "}" * 5000, "InvalidJSON"), ('{"n":1e999}', "InvalidJSON"),
                         ('"\\udc00"', "InvalidText")):
        decoded = ScreenedPacket(encoded_packet=f'2["user_uttered",{text}]')
        assert decoded.packet_type == packet.EVENT and decoded.data[0] == REFUSED_INPUT_EVT
        assert refused_input(decoded.data[1]).reason == reason


def test_a_binary_event_that_fails_waits_for_no_attachment():
    decoded = ScreenedPacket(encoded_packet='51-["user_uttered",{"n":NaN}]')
    assert decoded.packet_type == packet.EVENT and decoded.attachment_count == 0


def test_connect_auth_that_fails_is_handed_to_the_connect_handler():
    decoded = ScreenedPacket(encoded_packet='0{"token":' + "[" * 40 + "]" * 40 + "}")
    assert decoded.packet_type == packet.CONNECT and decoded.data[REFUSED_AUTH]["reason"] == "InvalidJSON"


def test_a_client_cannot_make_the_refusal_say_anything_but_a_refusal():
    assert refused_input("text") is None and refused_input({"reason": 1}) is None


def test_what_another_replica_published_is_decoded_as_redis_hands_it_over():
    # python-socketio's Redis manager decodes pubsub messages with the packet
    # class's JSON module, from bytes, and drops without a word what fails:
    # an emit to a room on another replica would vanish.
    message = {"method": "emit", "event": "bot_uttered", "data": {"text": "I'm here. " * 10_000}, "room": "s1"}
    published = ScreenedPacket.json.dumps(message).encode()
    assert len(published) > 64 * 1024  # larger than a client's packet may be
    assert ScreenedPacket.json.loads(published) == message
    assert ScreenedPacket.json.loads(bytearray(published)) == message
