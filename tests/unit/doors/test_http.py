"""What the doors' routes share: checking ServiceNow's callback credentials
(in constant time, whatever bytes a header holds), refusing body framing
before a byte is read, and reading bodies within their deadline."""

import asyncio
import base64
import sys
from types import SimpleNamespace
from typing import List, Optional

import pytest
from sanic.compat import Header

from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.doors.http import BodyReads, body_routes, callback_authorized, framing_error
from connectors.servicenow.payloads import PayloadError

OPTIONS = {
    "instance_url": "https://acme.service-now.com", "api": "virtual_agent", "username": "bot", "password": "pw",
    "webhook_secret": "s3cret", "context_variables": {"b2b_category": "it"}, "language": "en",
}


def test_callback_credentials_are_checked():
    secret_only = ServiceNowSettings.from_credentials(OPTIONS)
    assert callback_authorized(secret_only, {"X-Webhook-Secret": "s3cret"})
    assert not callback_authorized(secret_only, {"X-Webhook-Secret": "wrong"})
    assert not callback_authorized(secret_only, {})
    basic = ServiceNowSettings.from_credentials(
        {**OPTIONS, "webhook_secret": "", "webhook_username": "servicenow", "webhook_password": "pw"}
    )
    good = "Basic " + base64.b64encode(b"servicenow:pw").decode()
    bad = "Basic " + base64.b64encode(b"servicenow:nope").decode()
    assert callback_authorized(basic, {"Authorization": good})
    assert not callback_authorized(basic, {"Authorization": bad})
    assert not callback_authorized(basic, {"Authorization": "Basic !!!"})


@pytest.mark.parametrize("value", ["\udcff\udcfe", "s3cret\udc80", "é", "\ud800", "s3cret\x00"])
def test_callback_credentials_with_bytes_that_are_not_utf8_are_refused_not_a_crash(value):
    # Sanic hands over non-UTF-8 header bytes as lone surrogates.
    secret_only = ServiceNowSettings.from_credentials(OPTIONS)
    assert not callback_authorized(secret_only, {"X-Webhook-Secret": value})
    basic = ServiceNowSettings.from_credentials(
        {**OPTIONS, "webhook_secret": "", "webhook_username": "servicenow", "webhook_password": "pw"}
    )
    assert not callback_authorized(basic, {"Authorization": "Basic " + value})
    encoded = base64.b64encode(("servicenow:pw" + value).encode("utf-8", "surrogatepass")).decode()
    assert not callback_authorized(basic, {"Authorization": "Basic " + encoded})


PREFIX = "/webhooks/servicenow"


def request_with(method: str, path: str, headers: List[tuple]) -> SimpleNamespace:
    return SimpleNamespace(method=method, path=path, headers=Header(headers))


@pytest.mark.parametrize("method, path, headers, reason", [
    ("POST", "/webhook", [("content-length", "5"), ("content-length", "5")], "InvalidHeaders"),
    ("POST", "/webhook", [("transfer-encoding", "chunked"), ("content-length", "5")], "InvalidHeaders"),
    ("POST", "/webhook", [("transfer-encoding", "gzip")], "InvalidHeaders"),
    # Each of these is a length to Python's int(), and so to Sanic.
    ("POST", "/webhook", [("content-length", "+5")], "InvalidHeaders"),
    ("POST", "/webhook", [("content-length", "-1")], "InvalidHeaders"),
    ("POST", "/webhook", [("content-length", "\u0661\u0662")], "InvalidHeaders"),
    ("POST", "/webhook", [("content-length", "99999999999")], "PayloadTooLarge"),
    ("GET", "/stream", [("content-length", "3")], "UnexpectedBody"),
    ("POST", "/", [("transfer-encoding", "chunked")], "UnexpectedBody"),
    ("POST", "/webhook", [("content-length", "32")], None),
    ("POST", "/callback/", [("transfer-encoding", "chunked")], None),
    ("GET", "/stream", [("content-length", "0")], None),
    ("GET", "/stream", [], None),
])
def test_framing_is_refused_by_its_headers_alone(method, path, headers, reason):
    error = framing_error(request_with(method, PREFIX + path, headers), body_routes(PREFIX))
    assert (error.reason if error else None) == reason


class DrippingStream:
    """A request body that arrives in ``chunks``, one every ``every`` seconds (None: never ends)."""

    def __init__(self, chunks: Optional[List[bytes]], every: float) -> None:
        self.chunks, self.every = chunks, every
        self.keep_alive, self.request_body, self.request_max_size = True, True, 0

    async def read(self) -> Optional[bytes]:
        await asyncio.sleep(self.every)  # wait-ok: the client's pace, what the deadline is for
        if self.chunks is None:
            return b" "
        return self.chunks.pop(0) if self.chunks else None


def body_request(stream: DrippingStream) -> SimpleNamespace:
    return SimpleNamespace(stream=stream, headers=Header([]), body=None)


async def test_a_body_past_its_deadline_is_cut_with_408_and_its_connection_closed():
    reads = BodyReads(limit=4, deadline_s=0.2)
    stream = DrippingStream(None, every=0.01)
    started = asyncio.get_running_loop().time()
    with pytest.raises(PayloadError) as refused:
        await reads.read(body_request(stream), limit=1_000_000)
    took = asyncio.get_running_loop().time() - started
    # 1e-6: the deadline is the loop's clock plus 0.2 s, and that sum is rounded.
    assert refused.value.status == 408 and 0.2 - 1e-6 <= took < 2, took
    assert stream.keep_alive is False and stream.request_body is None
    assert reads.active == 0
    if sys.version_info >= (3, 11):
        assert asyncio.current_task().cancelling() == 0
    # The task goes on as any other: the cut was the deadline's, not a cancel of the request.
    await asyncio.sleep(0.3)  # wait-ok: past another sweep, which must not touch this task


async def test_bodies_within_their_deadline_are_read_whole_and_never_cut_afterwards():
    reads = BodyReads(limit=4, deadline_s=0.2)
    bodies = await asyncio.gather(*(
        reads.read(body_request(DrippingStream([b"ab", b"cd"], every=0.05)), limit=100) for _ in range(3)
    ))
    assert bodies == [b"abcd"] * 3 and reads.active == 0
    await asyncio.sleep(0.5)  # wait-ok: two sweeps later, nothing of these tasks is cancelled


async def test_beyond_the_limit_a_new_body_is_refused_unread_with_503():
    reads = BodyReads(limit=1, deadline_s=5)
    slow = asyncio.ensure_future(reads.read(body_request(DrippingStream([b"x"], every=0.2)), limit=100))
    await asyncio.sleep(0.01)  # wait-ok: lets the first read begin
    refused_stream = DrippingStream([b"y"], every=0)
    with pytest.raises(PayloadError) as refused:
        await reads.read(body_request(refused_stream), limit=100)
    assert refused.value.status == 503 and refused.value.retry_after
    assert refused_stream.keep_alive is False
    assert await slow == b"x"
