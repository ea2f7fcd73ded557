"""Who is calling the user-facing routes, and who ServiceNow is told the user is.

Authentication is Rasa's own scheme for its socket.io channel: with
``jwt_key`` set, a caller shows a JSON Web Token signed with that key
(``jwt_method``, HS256 by default) whose subject (``sub``) is the conversation
(the sender id). Without ``jwt_key``, as with Rasa's REST channel, whoever
knows a sender id speaks for that conversation.

What ServiceNow hears about the user (``Requester``) comes from the verified
token's claims, or from the webhook's ``metadata`` only when the operator says
the frontend is trusted (``trust_frontend_metadata``). Otherwise the sender id
is the user and nothing else is claimed.
"""

import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

import jwt

from connectors.servicenow.config import DEFAULT_MAX_TOKEN_LIFETIME_S
from connectors.servicenow.servicenow.base import Requester

BEARER_PREFIX = "bearer "
#: Clocks of the token's issuer and of this machine may differ this much.
CLOCK_LEEWAY_S = 60.0
#: Claims that say who the user is; the first present one wins per field.
USER_ID_CLAIMS = ("preferred_username", "sub")
EMAIL_CLAIMS = ("email",)
NAME_CLAIMS = ("name",)
#: The same fields in webhook metadata (``trust_frontend_metadata: true``).
USER_ID_METADATA = ("userId", "user_id")
EMAIL_METADATA = ("emailId", "email")
NAME_METADATA = ("userName", "name")

Claims = Mapping[str, Any]


class Unauthenticated(Exception):
    """The caller did not prove it may speak for the conversation (401)."""


def bearer_token(headers: Mapping[str, str], query_token: Optional[str] = None) -> Optional[str]:
    """The token of ``Authorization: Bearer <jwt>``, else ``query_token``
    (``?token=``, for EventSource, which cannot set headers)."""
    authorization = headers.get("Authorization") or ""
    if authorization[: len(BEARER_PREFIX)].lower() == BEARER_PREFIX:
        token = authorization[len(BEARER_PREFIX):].strip()
        if token:
            return token
    return query_token or None


def verify_token(
    token: Optional[str], key: str, algorithm: str, *, max_lifetime_s: float = DEFAULT_MAX_TOKEN_LIFETIME_S,
    now: Optional[float] = None,
) -> Dict[str, Any]:
    """The token's claims, once its signature, subject and expiry are checked.

    A token must expire (``exp``), and within ``max_lifetime_s`` of when it was
    issued (``iat``, else of now): a token that never expires, or in a year,
    is a password a leaked log line or browser history gives away for good."""
    if not token:
        raise Unauthenticated("This route needs 'Authorization: Bearer <token>'.")
    try:
        claims = jwt.decode(token, key, algorithms=[algorithm], options={"require": ["sub", "exp"]})
    except jwt.ExpiredSignatureError:
        raise Unauthenticated("The token has expired.") from None
    except jwt.MissingRequiredClaimError as error:
        raise Unauthenticated(f"The token has no '{error.claim}' claim.") from None
    except jwt.PyJWTError:
        # Which check failed (signature, algorithm, format) is not the caller's business.
        raise Unauthenticated("The token is not valid.") from None
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise Unauthenticated("The token has no subject.")
    issued = claims.get("iat")
    start = issued if isinstance(issued, (int, float)) and not isinstance(issued, bool) else (time.time() if now is None else now)
    if claims["exp"] - start > max_lifetime_s + CLOCK_LEEWAY_S:
        raise Unauthenticated(f"The token lives longer than {max_lifetime_s:g} s (jwt_max_lifetime).")
    return claims


def check_subject(claims: Claims, sender_id: str) -> None:
    """A token speaks for one conversation only: its subject."""
    if claims.get("sub") != sender_id:
        raise Unauthenticated("The token is for another conversation.")


def requester_of(
    sender_id: str, claims: Optional[Claims], metadata: Mapping[str, Any], *, trust_metadata: bool
) -> Requester:
    """Claims first; then, per field, metadata when the frontend is trusted;
    otherwise the sender id as the user and no email or name."""
    sources: List[Tuple[Mapping[str, Any], Tuple[str, ...], Tuple[str, ...], Tuple[str, ...]]] = []
    if claims:
        sources.append((claims, USER_ID_CLAIMS, EMAIL_CLAIMS, NAME_CLAIMS))
    if trust_metadata:
        sources.append((metadata, USER_ID_METADATA, EMAIL_METADATA, NAME_METADATA))
    user_id = email = name = None
    for source, user_keys, email_keys, name_keys in sources:
        user_id = user_id or _first_text(source, user_keys)
        email = email or _first_text(source, email_keys)
        name = name or _first_text(source, name_keys)
    return Requester(user_id=user_id or sender_id, email=email, name=name)


def _first_text(source: Mapping[str, Any], keys: "tuple[str, ...]") -> Optional[str]:
    for key in keys:
        value = source.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None
