"""Credentials for calls to the instance: HTTP Basic, or OAuth 2.0 tokens
from ``/oauth_token.do`` that are renewed before they expire and again
whenever the instance answers 401.
"""

import asyncio
import base64
import logging
import time
from abc import ABC, abstractmethod
from typing import Callable, Dict, Optional

import aiohttp

from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.errors import AuthenticationFailed

logger = logging.getLogger(__name__)

TOKEN_PATH = "/oauth_token.do"
# Renew this long before the announced expiry so a request never leaves with
# a token that dies in flight.
EXPIRY_MARGIN_S = 60.0


class TransientAuthError(Exception):
    """The token endpoint failed in a way a retry may fix (5xx, network)."""


class Auth(ABC):
    #: Whether a 401 may be cured by asking for new credentials.
    renewable: bool = False

    @abstractmethod
    async def header(self, session: aiohttp.ClientSession, base_url: str) -> str:
        """The ``Authorization`` header value for the next request."""

    def invalidate(self) -> None:
        """Forget cached credentials after the instance rejected them."""


class BasicAuth(Auth):
    def __init__(self, username: str, password: str) -> None:
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self._header = f"Basic {token}"

    async def header(self, session: aiohttp.ClientSession, base_url: str) -> str:
        return self._header


class OAuth2(Auth):
    """Password grant when a user name is configured, client credentials otherwise.

    One refresh at a time: a burst of requests that all find the token stale
    waits for a single call to the token endpoint.
    """

    renewable = True

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        username: Optional[str] = None,
        password: Optional[str] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client_id = client_id
        self._client_secret = client_secret
        self._username = username
        self._password = password
        self._clock = clock
        self._access_token: Optional[str] = None
        self._refresh_token: Optional[str] = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    async def header(self, session: aiohttp.ClientSession, base_url: str) -> str:
        if not self._is_fresh():
            async with self._lock:
                if not self._is_fresh():
                    await self._renew(session, base_url)
        return f"Bearer {self._access_token}"

    def invalidate(self) -> None:
        self._access_token = None

    def _is_fresh(self) -> bool:
        return self._access_token is not None and self._clock() < self._expires_at

    async def _renew(self, session: aiohttp.ClientSession, base_url: str) -> None:
        if self._refresh_token:
            try:
                await self._request_token(
                    session, base_url, {"grant_type": "refresh_token", "refresh_token": self._refresh_token}
                )
                return
            except AuthenticationFailed:
                logger.info("ServiceNow refused the OAuth refresh token; requesting a new token.")
                self._refresh_token = None
        if self._username:
            grant = {"grant_type": "password", "username": self._username, "password": self._password or ""}
        else:
            grant = {"grant_type": "client_credentials"}
        await self._request_token(session, base_url, grant)

    async def _request_token(
        self, session: aiohttp.ClientSession, base_url: str, grant: Dict[str, str]
    ) -> None:
        form = {"client_id": self._client_id, "client_secret": self._client_secret, **grant}
        try:
            async with session.post(
                base_url + TOKEN_PATH, data=form, headers={"Accept": "application/json"}
            ) as response:
                status = response.status
                body = await response.json(content_type=None) if status < 500 else None
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
            raise TransientAuthError(f"token endpoint unreachable: {type(error).__name__}") from error
        if status >= 500 or status == 429:
            raise TransientAuthError(f"token endpoint answered {status}")
        if status != 200 or not isinstance(body, dict) or not body.get("access_token"):
            raise AuthenticationFailed(
                f"ServiceNow refused the OAuth {grant['grant_type']} grant (HTTP {status})",
                status=status if status >= 400 else 401,
                detail=str((body or {}).get("error_description", "")) if isinstance(body, dict) else "",
            )
        self._access_token = str(body["access_token"])
        self._refresh_token = body.get("refresh_token") or self._refresh_token
        lifetime = float(body.get("expires_in") or 1800)
        self._expires_at = self._clock() + max(lifetime - EXPIRY_MARGIN_S, lifetime / 2)
        logger.info("Obtained a ServiceNow OAuth token (%s grant, valid %.0fs).", grant["grant_type"], lifetime)


def auth_from_settings(settings: ServiceNowSettings) -> Auth:
    if settings.uses_oauth:
        return OAuth2(
            settings.client_id or "",
            settings.client_secret or "",
            username=settings.username,
            password=settings.password,
        )
    return BasicAuth(settings.username or "", settings.password or "")
