"""The HTTP client against a mocked instance (aioresponses): auth, retries, errors."""

import asyncio

import aiohttp
import pytest
from aioresponses import aioresponses

from connectors.servicenow.servicenow.auth import OAuth2
from connectors.servicenow.servicenow.http import ServiceNowHTTP
from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.errors import AuthenticationFailed, ServiceNowRejected, ServiceNowUnavailable

BASE = "https://acme.service-now.com"
URL = BASE + "/api/now/thing"


def settings(**overrides):
    options = {"instance_url": BASE, "username": "bot", "password": "pw", "queue_id": "q"}
    options.update(overrides)
    return ServiceNowSettings.from_credentials(options)


class RecordingSleep:
    def __init__(self):
        self.delays = []

    async def __call__(self, delay):
        self.delays.append(delay)


@pytest.fixture
def sleep():
    return RecordingSleep()


@pytest.fixture
async def client(sleep):
    http = ServiceNowHTTP(settings(), sleep=sleep)
    yield http
    await http.aclose()


async def test_basic_auth_and_json_headers_are_sent(client):
    with aioresponses() as mock:
        mock.get(URL, payload={"result": 1})
        assert await client.request("GET", "/api/now/thing") == {"result": 1}
        call = mock.requests[("GET", aiohttp.client.URL(URL))][0]
        headers = call.kwargs["headers"]
        assert headers["Authorization"] == "Basic Ym90OnB3"
        assert headers["Accept"] == "application/json"


async def test_server_errors_are_retried_with_growing_backoff(client, sleep):
    with aioresponses() as mock:
        mock.post(URL, status=503)
        mock.post(URL, status=500)
        mock.post(URL, payload={"result": "ok"})
        assert await client.request("POST", "/api/now/thing", json_body={}) == {"result": "ok"}
    assert len(sleep.delays) == 2
    assert 0.25 <= sleep.delays[0] <= 0.5 and 0.5 <= sleep.delays[1] <= 1.0


async def test_retry_after_of_a_429_is_honoured(client, sleep):
    with aioresponses() as mock:
        mock.get(URL, status=429, headers={"Retry-After": "2"})
        mock.get(URL, payload={"result": []})
        await client.request("GET", "/api/now/thing")
    assert sleep.delays == [2.0]


async def test_timeouts_and_dropped_connections_are_retried(client, sleep):
    with aioresponses() as mock:
        mock.get(URL, exception=asyncio.TimeoutError())
        mock.get(URL, exception=aiohttp.ServerDisconnectedError())
        mock.get(URL, payload={"result": "late"})
        assert await client.request("GET", "/api/now/thing") == {"result": "late"}
    assert len(sleep.delays) == 2


async def test_an_html_page_instead_of_json_is_retried(client):
    with aioresponses() as mock:
        mock.get(URL, body="<html>Your instance is hibernating</html>", content_type="text/html")
        mock.get(URL, payload={"result": "awake"})
        assert await client.request("GET", "/api/now/thing") == {"result": "awake"}


async def test_retries_are_bounded(client, sleep):
    with aioresponses() as mock:
        mock.get(URL, status=503, repeat=True)
        with pytest.raises(ServiceNowUnavailable) as caught:
            await client.request("GET", "/api/now/thing")
    assert caught.value.attempts == 5 and caught.value.status == 503
    assert len(sleep.delays) == 4


async def test_a_definite_no_is_not_retried(client, sleep):
    with aioresponses() as mock:
        mock.post(URL, status=403, payload={"result": "The session is closed"})
        with pytest.raises(ServiceNowRejected) as caught:
            await client.request("POST", "/api/now/thing", json_body={})
    assert caught.value.status == 403 and caught.value.detail == "The session is closed"
    assert sleep.delays == []


async def test_basic_auth_refused_is_final(client):
    with aioresponses() as mock:
        mock.get(URL, status=401, payload={"error": {"message": "User Not Authenticated"}, "status": "failure"})
        with pytest.raises(AuthenticationFailed):
            await client.request("GET", "/api/now/thing")


async def test_long_retry_after_is_capped(sleep):
    http = ServiceNowHTTP(settings(retry_after_limit="5"), sleep=sleep)
    try:
        with aioresponses() as mock:
            mock.get(URL, status=429, headers={"Retry-After": "3600"})
            mock.get(URL, payload={"result": 1})
            await http.request("GET", "/api/now/thing")
    finally:
        await http.aclose()
    assert sleep.delays == [5.0]


class TestOAuth:
    TOKEN_URL = BASE + "/oauth_token.do"

    @pytest.fixture
    async def oauth_client(self, sleep):
        http = ServiceNowHTTP(settings(client_id="cid", client_secret="cs", username="", password=""), sleep=sleep)
        yield http
        await http.aclose()

    async def test_client_credentials_token_is_fetched_once_and_reused(self, oauth_client):
        with aioresponses() as mock:
            mock.post(self.TOKEN_URL, payload={"access_token": "t1", "expires_in": 1799, "token_type": "Bearer"})
            mock.get(URL, payload={"result": 1}, repeat=True)
            await asyncio.gather(*(oauth_client.request("GET", "/api/now/thing") for _ in range(5)))
            token_calls = mock.requests[("POST", aiohttp.client.URL(self.TOKEN_URL))]
            assert len(token_calls) == 1
            assert token_calls[0].kwargs["data"]["grant_type"] == "client_credentials"
            api_call = mock.requests[("GET", aiohttp.client.URL(URL))][0]
            assert api_call.kwargs["headers"]["Authorization"] == "Bearer t1"

    async def test_a_401_gets_a_fresh_token_and_one_more_try(self, oauth_client):
        with aioresponses() as mock:
            mock.post(self.TOKEN_URL, payload={"access_token": "old", "expires_in": 1799})
            mock.post(self.TOKEN_URL, payload={"access_token": "new", "expires_in": 1799})
            mock.get(URL, status=401)
            mock.get(URL, payload={"result": "ok"})
            assert await oauth_client.request("GET", "/api/now/thing") == {"result": "ok"}
            calls = mock.requests[("GET", aiohttp.client.URL(URL))]
            assert [call.kwargs["headers"]["Authorization"] for call in calls] == ["Bearer old", "Bearer new"]

    async def test_refused_client_is_an_authentication_failure(self, oauth_client):
        with aioresponses() as mock:
            mock.post(self.TOKEN_URL, status=401, payload={"error": "access_denied"})
            with pytest.raises(AuthenticationFailed):
                await oauth_client.request("GET", "/api/now/thing")

    async def test_password_grant_and_refresh_token(self):
        clock = [0.0]
        auth = OAuth2("cid", "cs", username="bot", password="pw", clock=lambda: clock[0])
        async with aiohttp.ClientSession() as session:
            with aioresponses() as mock:
                mock.post(self.TOKEN_URL, payload={"access_token": "a1", "refresh_token": "r1", "expires_in": 1799})
                mock.post(self.TOKEN_URL, payload={"access_token": "a2", "refresh_token": "r2", "expires_in": 1799})
                assert await auth.header(session, BASE) == "Bearer a1"
                clock[0] = 1799 - 30  # inside the renewal margin
                assert await auth.header(session, BASE) == "Bearer a2"
                grants = [call.kwargs["data"] for call in mock.requests[("POST", aiohttp.client.URL(self.TOKEN_URL))]]
        assert grants[0]["grant_type"] == "password" and grants[0]["username"] == "bot"
        assert grants[1] == {"client_id": "cid", "client_secret": "cs", "grant_type": "refresh_token", "refresh_token": "r1"}

    async def test_token_endpoint_outage_is_retried(self, oauth_client, sleep):
        with aioresponses() as mock:
            mock.post(self.TOKEN_URL, status=503)
            mock.post(self.TOKEN_URL, payload={"access_token": "t", "expires_in": 1799})
            mock.get(URL, payload={"result": 1})
            assert await oauth_client.request("GET", "/api/now/thing") == {"result": 1}
        assert len(sleep.delays) == 1



async def test_every_attempt_and_every_retry_is_reported_to_the_observers(sleep):
    attempts, retries = [], []
    http = ServiceNowHTTP(
        settings(),
        sleep=sleep,
        on_attempt=lambda method, path, status, seconds: attempts.append((method, path, status, seconds)),
        on_retry=lambda method, path: retries.append((method, path)),
    )
    try:
        with aioresponses() as mock:
            mock.post(URL, status=503)
            mock.post(URL, exception=asyncio.TimeoutError())
            mock.post(URL, payload={"result": "ok"})
            assert await http.request("POST", "/api/now/thing", json_body={}) == {"result": "ok"}
    finally:
        await http.aclose()
    assert [(method, path, status) for method, path, status, _ in attempts] == [
        ("POST", "/api/now/thing", 503),
        ("POST", "/api/now/thing", None),
        ("POST", "/api/now/thing", 200),
    ]
    assert all(seconds >= 0 for *_, seconds in attempts)
    assert retries == [("POST", "/api/now/thing")] * 2
