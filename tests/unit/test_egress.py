"""Users' file URLs stay off the deployment's own network unless the operator
lists the hosts (issue 20): addresses, the resolver, literals and redirects,
against real loopback servers where a user's request would meet them."""

import socket
from typing import Any, Dict, List

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver

from connectors.servicenow.attachments import AttachmentPolicy, AttachmentRefused, UserAttachment
from connectors.servicenow.egress import (
    NonPublicAddress,
    PublicAddressResolver,
    file_session,
    is_public_address,
    open_url,
    resolve_public,
)

NOT_PUBLIC = [
    "127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "100.100.100.200", "0.0.0.0", "224.0.0.1", "239.255.255.250", "255.255.255.255", "192.0.2.1", "198.18.0.1",
    "::1", "::", "fe80::1", "fc00::1", "fd00:ec2::254", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
    "::ffff:169.254.169.254", "2002:7f00:1::", "2002:a9fe:a9fe::", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo for 127.0.0.1
    "fe80::1%eth0", "not an address",
]
PUBLIC = ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:93.184.216.34", "2002:5db8:d822::"]


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_internal_addresses_are_not_public(address):
    assert not is_public_address(address)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses(address):
    assert is_public_address(address)


class Answers(AbstractResolver):
    def __init__(self, *hosts: str) -> None:
        self.hosts = hosts

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> List[Dict[str, Any]]:
        return [{"hostname": host, "host": h, "port": port, "family": family, "proto": 0, "flags": 0} for h in self.hosts]

    async def close(self) -> None:
        pass


async def test_the_resolver_hands_on_only_public_addresses():
    mixed = PublicAddressResolver(Answers("10.0.0.5", "93.184.216.34", "::1"))
    assert [entry["host"] for entry in await mixed.resolve("files.example", 443)] == ["93.184.216.34"]
    with pytest.raises(NonPublicAddress):
        await PublicAddressResolver(Answers("127.0.0.1", "169.254.169.254")).resolve("rebind.example", 80)


@pytest.fixture
async def loopback_files():
    """A real HTTP server on loopback: /file, and /hop which redirects to it."""
    async def file(_request: web.Request) -> web.Response:
        return web.Response(body=b"internal secret", content_type="text/plain")

    async def hop(request: web.Request) -> web.Response:
        raise web.HTTPFound(str(request.url.with_path("/file")))

    app = web.Application()
    app.router.add_get("/file", file)
    app.router.add_get("/hop", hop)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"127.0.0.1:{port}"
    await runner.cleanup()


def text_file(url: str, size: Any = None) -> UserAttachment:
    return UserAttachment(url=url, content_type="text/plain", name="a.txt", size=size)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
async def test_without_a_host_list_loopback_files_are_refused(loopback_files, host):
    port = loopback_files.split(":")[1]
    policy = AttachmentPolicy()
    session = file_session(5, public_only=True)
    try:
        for method in (policy.download, policy.check_size):
            with pytest.raises(AttachmentRefused, match="not on the public internet"):
                await method(text_file(f"http://{host}:{port}/file"), session)
        # A declared size makes no request, but the address is checked all the same (ServiceNow would fetch it).
        with pytest.raises(AttachmentRefused, match="not on the public internet"):
            await policy.check_size(text_file(f"http://{host}:{port}/file", size=10), session)
    finally:
        await session.close()


async def test_a_listed_host_is_fetched_wherever_it_is(loopback_files):
    policy = AttachmentPolicy(hosts=("127.0.0.1",))
    session = file_session(5, public_only=policy.public_only)
    try:
        assert await policy.download(text_file(f"http://{loopback_files}/file"), session) == b"internal secret"
    finally:
        await session.close()


async def test_a_redirect_to_an_internal_address_is_refused(loopback_files):
    # The first hop must look public to get that far: a resolver that calls a public name loopback
    # is what a DNS rebinding attacker would run, and it is refused at the connection.
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=PublicAddressResolver(Answers("127.0.0.1"))))
    try:
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            await open_url(session, "GET", f"http://files.example:{loopback_files.split(':')[1]}/file",
                           public_only=True, follow_redirects=True, timeout=aiohttp.ClientTimeout(total=5))
        assert isinstance(caught.value.os_error, NonPublicAddress)
        # A hop to a literal loopback address is checked before any request.
        plain = aiohttp.ClientSession()
        try:
            with pytest.raises(NonPublicAddress):
                await open_url(plain, "GET", f"http://{loopback_files}/hop", public_only=True, follow_redirects=True,
                               timeout=aiohttp.ClientTimeout(total=5))
        finally:
            await plain.close()
    finally:
        await session.close()


async def test_every_redirect_hop_is_checked():
    from aioresponses import aioresponses

    session = file_session(5, public_only=True)
    try:
        with aioresponses() as mock:
            mock.get("https://files.example.com/a", status=302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
            with pytest.raises(AttachmentRefused, match="not on the public internet"):
                await AttachmentPolicy().download(text_file("https://files.example.com/a"), session)
            assert len(mock.requests) == 1
    finally:
        await session.close()


async def test_resolve_public_checks_literals_and_names():
    for url in ("http://127.0.0.1/x", "http://[::1]:8080/x", "http://localhost/x", "http://0177.0.0.1/x"):
        with pytest.raises(OSError):
            await resolve_public(url)
    await resolve_public("https://93.184.216.34/x")


async def test_the_instance_itself_is_allowed_besides_public_addresses(loopback_files):
    """In make run the instance is the emulator on loopback: its endpoint works, nothing else there."""
    port = int(loopback_files.split(":")[1])
    policy = AttachmentPolicy(trusted=frozenset({("127.0.0.1", port)}))
    session = file_session(5, public_only=policy.public_only, trusted=policy.trusted)
    try:
        assert await policy.download(text_file(f"http://127.0.0.1:{port}/file"), session) == b"internal secret"
        await policy.check_size(text_file(f"http://127.0.0.1:{port}/file", size=3), session)
        for other in (f"http://localhost:{port}/file", f"http://127.0.0.1:{port + 1}/file"):
            with pytest.raises(AttachmentRefused, match="not on the public internet"):
                await policy.download(text_file(other), session)
    finally:
        await session.close()


def test_the_instance_endpoint_comes_from_instance_url():
    from connectors.servicenow.config import ServiceNowSettings

    settings = ServiceNowSettings.from_credentials(
        {"instance_url": "http://127.0.0.1:8181", "username": "u", "password": "p", "queue_id": "q"}
    )
    assert settings.attachment_policy.trusted == frozenset({("127.0.0.1", 8181)})
