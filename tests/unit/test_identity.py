"""JWT verification as Rasa's socket.io channel does it, and where the
identity sent to ServiceNow comes from."""

import time

import jwt
import pytest

from connectors.servicenow.servicenow.base import Requester
from connectors.servicenow.identity import Unauthenticated, bearer_token, check_subject, requester_of, verify_token

KEY = "a-test-key-of-at-least-32-bytes-length"


def token(claims, key=KEY, algorithm="HS256"):
    """A token that expires in ten minutes unless the claims say otherwise."""
    return jwt.encode({"exp": int(time.time()) + 600, **claims}, key, algorithm=algorithm)


def test_a_valid_token_gives_its_claims():
    claims = verify_token(token({"sub": "u1", "email": "u1@example.com"}), KEY, "HS256")
    assert claims["sub"] == "u1" and claims["email"] == "u1@example.com"


@pytest.mark.parametrize(
    "make, problem",
    [
        # Made when the test runs, not when it is collected: a token's times are relative to now.
        (lambda: None, "needs"),
        (lambda: "", "needs"),
        (lambda: "not-a-jwt", "not valid"),
        (lambda: token({"sub": "u1"}, key="another-key-of-at-least-32-bytes-long"), "not valid"),
        (lambda: token({"sub": "u1", "exp": int(time.time()) - 10}), "expired"),
        (lambda: token({"email": "no-subject@example.com"}), "no 'sub' claim"),
        (lambda: jwt.encode({"sub": "u1"}, KEY, algorithm="HS256"), "no 'exp' claim"),
        (lambda: token({"sub": "u1", "exp": int(time.time()) + 2 * 86400}), "lives longer than 86400 s"),
        (lambda: token({"sub": "u1", "iat": int(time.time()) - 3 * 86400, "exp": int(time.time()) + 60}), "lives longer"),
        (lambda: token({"sub": "u1"}, algorithm="HS512"), "not valid"),  # not the configured method
        (lambda: jwt.encode({"sub": "u1"}, None, algorithm="none"), "not valid"),
    ],
)
def test_missing_forged_expired_or_subjectless_tokens_are_refused(make, problem):
    with pytest.raises(Unauthenticated, match=problem):
        verify_token(make(), KEY, "HS256")


def test_the_longest_lifetime_is_an_option():
    year = token({"sub": "u1", "iat": int(time.time()), "exp": int(time.time()) + 365 * 86400})
    assert verify_token(year, KEY, "HS256", max_lifetime_s=366 * 86400)["sub"] == "u1"
    with pytest.raises(Unauthenticated, match="lives longer than 3600 s"):
        verify_token(token({"sub": "u1", "exp": int(time.time()) + 7200}), KEY, "HS256", max_lifetime_s=3600)


def test_a_token_speaks_for_its_subject_only():
    check_subject({"sub": "u1"}, "u1")
    with pytest.raises(Unauthenticated, match="another conversation"):
        check_subject({"sub": "u1"}, "u2")


def test_the_token_comes_from_the_bearer_header_or_the_query():
    assert bearer_token({"Authorization": "Bearer abc"}) == "abc"
    assert bearer_token({"Authorization": "bearer abc"}, "q") == "abc"
    assert bearer_token({"Authorization": "Basic abc"}, "q") == "q"
    assert bearer_token({}, None) is None and bearer_token({}, "") is None


METADATA = {"userId": "mallory", "emailId": "mallory@example.com", "userName": "Mallory"}


def test_without_token_or_trust_the_sender_is_the_user_and_nothing_else_is_claimed():
    assert requester_of("u1", None, METADATA, trust_metadata=False) == Requester(user_id="u1")


def test_a_trusted_frontend_supplies_the_identity():
    requester = requester_of("u1", None, METADATA, trust_metadata=True)
    assert requester == Requester(user_id="mallory", email="mallory@example.com", name="Mallory")


def test_claims_win_over_metadata_and_metadata_counts_only_when_trusted():
    claims = {"sub": "u1", "email": "abel@example.com", "name": "Abel Tuter"}
    assert requester_of("u1", claims, METADATA, trust_metadata=False) == Requester("u1", "abel@example.com", "Abel Tuter")
    assert requester_of("u1", claims, METADATA, trust_metadata=True) == Requester("u1", "abel@example.com", "Abel Tuter")
    assert requester_of("u1", {"sub": "u1"}, METADATA, trust_metadata=True) == Requester("u1", "mallory@example.com", "Mallory")
    assert requester_of("u1", {"sub": "u1", "preferred_username": "abel.tuter"}, {}, trust_metadata=False).user_id == "abel.tuter"
