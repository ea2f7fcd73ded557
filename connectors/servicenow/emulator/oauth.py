"""Credentials: the OAuth token endpoint ``POST /oauth_token.do`` (reference 2.6, 5.2) and the check of the
``Authorization`` header that guards every ``/api`` route (Basic or Bearer).

Tokens live in the emulator state and expire on the emulator clock, so a test can expire them by moving the clock
forward or with ``POST /__emu/oauth/expire``.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Any, Dict, Mapping, Optional

from aiohttp import web

from .responses import oauth_error
from .state import STATE_KEY, EmulatorState, RefreshGrant, Token

TOKEN_PATH = "/oauth_token.do"
#: Scope ServiceNow returns for the password grant [V oauth-example.md].
DEFAULT_SCOPE = "useraccount"


def add_routes(app: web.Application) -> None:
    app.router.add_post(TOKEN_PATH, token_endpoint)


async def token_endpoint(request: web.Request) -> web.Response:
    """Form-encoded grants: ``password``, ``client_credentials`` and ``refresh_token``."""
    state = request.app[STATE_KEY]
    if request.content_type != "application/x-www-form-urlencoded":
        raise oauth_error(400, "invalid_request", "The token request must be application/x-www-form-urlencoded")
    form = await request.post()
    grant_type = form.get("grant_type")
    if not grant_type:
        raise oauth_error(400, "invalid_request", "grant_type is required")
    if grant_type not in ("password", "client_credentials", "refresh_token"):
        raise oauth_error(400, "unsupported_grant_type", f"Unsupported grant_type {grant_type!r}")

    client_id = str(form.get("client_id", ""))
    client = state.config.oauth_clients.get(client_id)
    if client is None or not _same(str(form.get("client_secret", "")), client["secret"]):
        raise oauth_error(401, "access_denied", "Invalid client_id or client_secret")
    if grant_type not in client.get("grants", []):
        # Mirrors glide.oauth.inbound.client.credential.grant_type.enabled=false [V property, I status].
        raise oauth_error(401, "access_denied", f"The {grant_type} grant is not enabled for this client")

    if grant_type == "password":
        user = _password_user(state, form)
        refresh_token = _new_refresh(state, user, client_id)
        return web.json_response(_issue(state, user, client_id, DEFAULT_SCOPE, refresh_token=refresh_token))
    if grant_type == "client_credentials":
        user = client.get("user")
        if not user:
            raise oauth_error(401, "access_denied", "No OAuth Application User is configured for this client")
        # No refresh token for client credentials [I]: the client can always ask again.
        return web.json_response(_issue(state, user, client_id, str(form.get("scope") or DEFAULT_SCOPE)))
    grant = state.refresh_grants.get(str(form.get("refresh_token", "")))
    if grant is None or grant.revoked or grant.client_id != client_id:
        raise oauth_error(401, "access_denied", "Invalid refresh token")
    # The same refresh token stays valid and is returned again [I].
    return web.json_response(_issue(state, grant.user, client_id, grant.scope, refresh_token=grant.refresh_token))


def _same(given: str, expected: str) -> bool:
    return secrets.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _password_user(state: EmulatorState, form: Mapping[str, Any]) -> str:
    username, password = form.get("username"), form.get("password")
    if not username or password is None:
        raise oauth_error(400, "invalid_request", "username and password are required")
    expected = state.config.basic_users.get(str(username))
    if expected is None or not _same(str(password), expected):
        raise oauth_error(401, "access_denied", "Invalid username or password")
    return str(username)


def _new_refresh(state: EmulatorState, user: str, client_id: str) -> str:
    grant = RefreshGrant(secrets.token_urlsafe(48), user, client_id, DEFAULT_SCOPE)
    state.refresh_grants[grant.refresh_token] = grant
    return grant.refresh_token


def _issue(
    state: EmulatorState, user: str, client_id: str, scope: str, refresh_token: Optional[str] = None
) -> Dict[str, Any]:
    """Store a new access token and return the token response in ServiceNow's field order [V shape]."""
    ttl_s = int(state.config.token_ttl_s)
    token = Token(secrets.token_urlsafe(48), user, client_id, scope, state.clock.now_ms() + ttl_s * 1000)
    state.access_tokens[token.access_token] = token
    body: Dict[str, Any] = {"scope": scope, "token_type": "Bearer", "expires_in": ttl_s}
    if refresh_token is not None:
        body["refresh_token"] = refresh_token
    body["access_token"] = token.access_token
    return body


def authenticated_user(state: EmulatorState, authorization: Optional[str]) -> Optional[str]:
    """The user name an ``Authorization`` header proves, or ``None``: Basic against ``basic_users``, Bearer against
    issued tokens that are neither expired nor revoked."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "basic":
        try:
            user, sep, password = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        expected = state.config.basic_users.get(user)
        if sep and expected is not None and _same(password, expected):
            return user
        return None
    if scheme.lower() == "bearer":
        token = state.access_tokens.get(credentials)
        if token is not None and not token.revoked and state.clock.now_ms() < token.expires_ms:
            return token.user
    return None


def expire_tokens(state: EmulatorState, which: str = "*", refresh_tokens: bool = False) -> int:
    """Revoke access tokens: all (``"*"``) or the one named (an access or a refresh token). With ``refresh_tokens``,
    ``"*"`` revokes the refresh tokens too, forcing a new password/client_credentials grant. Returns how many."""
    count = 0
    for token in state.access_tokens.values():
        if (which == "*" or which == token.access_token) and not token.revoked:
            token.revoked = True
            count += 1
    for grant in state.refresh_grants.values():
        if ((which == "*" and refresh_tokens) or which == grant.refresh_token) and not grant.revoked:
            grant.revoked = True
            count += 1
    return count
