"""Signed callbacks (signing.py): Standard Webhooks' headers, its published
test vector, the secrets it accepts, and delivery ids."""

import pytest

from connectors.servicenow.signing import CallbackSigner, delivery_id, new_secret, secret_key

# Standard Webhooks' own test vector (its libraries' tests, e.g. libraries/python).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_signature_is_standard_webhooks_own():
    signer = CallbackSigner(VECTOR_SECRET, clock=lambda: VECTOR_TIMESTAMP + 0.9)
    assert signer.headers(VECTOR_ID, VECTOR_BODY) == {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }
    # The prefix is optional, as in the standard's libraries.
    assert CallbackSigner(VECTOR_SECRET[len("whsec_"):], clock=lambda: VECTOR_TIMESTAMP).headers(VECTOR_ID, VECTOR_BODY) \
        == signer.headers(VECTOR_ID, VECTOR_BODY)


def test_without_a_secret_only_the_id_and_the_time_are_sent():
    headers = CallbackSigner(None, clock=lambda: 5.0).headers("msg_1", b"{}")
    assert headers == {"webhook-id": "msg_1", "webhook-timestamp": "5"}


@pytest.mark.parametrize("secret", ["whsec_", "whsec_not base64!", "whsec_c2hvcnQ=", "plain words", "whsec_" + "QUFB" * 30])
def test_a_secret_that_is_not_24_to_64_random_bytes_is_refused(secret):
    with pytest.raises(ValueError) as refused:
        secret_key(secret)
    assert secret not in str(refused.value)


def test_a_new_secret_is_usable_and_new():
    first, second = new_secret(), new_secret()
    assert first != second and len(secret_key(first)) == 32


def test_a_delivery_id_is_the_entry_of_one_conversation_and_header_safe():
    ids = {delivery_id(sender, entry) for sender in ("alice", "bob", "élodie\u2028") for entry in ("1-0", "1-1")}
    assert len(ids) == 6
    assert all(webhook_id.isascii() and "." not in webhook_id and webhook_id.startswith("msg_") for webhook_id in ids)
    assert delivery_id("alice", "1700000000000-3") == delivery_id("alice", "1700000000000-3")
