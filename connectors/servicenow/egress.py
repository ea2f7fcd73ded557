"""Requests to URLs a user gave (their file's URL), kept off the deployment's
own network unless the operator names the hosts.

Without ``attachment_hosts``, a URL whose host is, or resolves to, an address
that is not on the public internet is refused: loopback, private (RFC 1918,
IPv6 unique local), link-local (cloud metadata at 169.254.169.254 and
``fd00:ec2::254`` included), shared (100.64/10), multicast, unspecified,
reserved and documentation ranges, also when wrapped in IPv6 (IPv4-mapped,
6to4, NAT64, Teredo). The check holds for the address actually connected to:
the session's resolver hands aiohttp only the addresses it checked, so a name
cannot resolve to a public address for the check and a private one for the
connection (DNS rebinding). aiohttp does not ask the resolver for a literal IP
in a URL, so literals are checked before each request, and redirects are
followed here, one hop at a time, with the same checks.

With ``attachment_hosts``, the operator vouches for the listed hosts, wherever
they are (an internal upload store is a common case), and no redirect is
followed (``AttachmentPolicy.follows_redirects``). The ServiceNow
instance the channel talks to anyway (``instance_url``: its host and port,
nothing else there) is allowed too: in ``make run`` that is the emulator on
loopback.
"""

import ipaddress
import socket
from typing import AbstractSet, Any, Dict, List, Optional, Tuple, Union
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
#: A host (lower case, no brackets) and a port.
Endpoint = Tuple[str, int]

#: Hops followed for one file; a longer chain is refused.
MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# NAT64's well-known prefix (RFC 6052) carries an IPv4 address in its last 32 bits.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


class EgressRefused(OSError):
    """A user-given URL the channel will not request. An ``OSError``, so that
    aiohttp passes it on from its resolver (as ``ClientConnectorError.os_error``)."""


class NonPublicAddress(EgressRefused):
    """The URL's host is, or resolves only to, addresses off the public internet."""


def embedded_ipv4(address: ipaddress.IPv6Address) -> Optional[ipaddress.IPv4Address]:
    """The IPv4 address an IPv6 address stands for, if it is one of the forms that carry one."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64 or address in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public_address(address: Union[str, IPAddress]) -> bool:
    """Whether a connection to ``address`` leaves for the public internet."""
    try:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return False
        inner = embedded_ipv4(ip)
        if inner is not None and not is_public_address(inner):
            return False
    # is_global is False for private, loopback, link-local, shared, reserved,
    # unspecified and documentation ranges; multicast can be "global" but never names one host.
    return ip.is_global and not ip.is_multicast


def endpoint_of(url: str) -> Endpoint:
    """The host and port a URL connects to (the scheme's port when none is given)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    return ((parts.hostname or "").lower().strip("[]"), port)


def literal_address(host: str) -> Optional[IPAddress]:
    """The IP address a URL's host spells out, or None for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class PublicAddressResolver(AbstractResolver):
    """Resolves as usual, then keeps only public addresses: what aiohttp
    connects to is what was checked."""

    def __init__(self, inner: Optional[AbstractResolver] = None, trusted: AbstractSet[Endpoint] = frozenset()) -> None:
        self._inner = inner if inner is not None else DefaultResolver()
        self._trusted = trusted

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> List[Dict[str, Any]]:
        found = await self._inner.resolve(host, port, family)
        if (host.lower(), port) in self._trusted:
            return found
        public = [entry for entry in found if is_public_address(str(entry.get("host", "")))]
        if not public:
            raise NonPublicAddress(f"{host} resolves to no public address")
        return public

    async def close(self) -> None:
        await self._inner.close()


def check_literal(url: str, trusted: AbstractSet[Endpoint] = frozenset()) -> None:
    """Raise ``NonPublicAddress`` for a URL whose host is a literal non-public IP
    (a zone id, ``fe80::1%eth0``, is never public), unless it is a ``trusted`` endpoint."""
    host = urlsplit(url).hostname or ""
    if endpoint_of(url) in trusted:
        return
    if "%" in host:
        raise NonPublicAddress("the host carries an IPv6 zone")
    address = literal_address(host)
    if address is not None and not is_public_address(address):
        raise NonPublicAddress("the host is not a public address")


def file_session(timeout: float, *, public_only: bool, trusted: AbstractSet[Endpoint] = frozenset()) -> aiohttp.ClientSession:
    """A session for user-given URLs, with no proxy from the environment and no
    cookies kept between users' files; ``public_only`` (no ``attachment_hosts``):
    it connects to public addresses only, and to ``trusted`` endpoints."""
    resolver: AbstractResolver = PublicAddressResolver(trusted=trusted) if public_only else DefaultResolver()
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(resolver=resolver, limit=20),
        timeout=aiohttp.ClientTimeout(total=timeout),
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": "rasa-servicenow-handoff"},
        trust_env=False,
    )


async def resolve_public(url: str, trusted: AbstractSet[Endpoint] = frozenset()) -> None:
    """Raise ``NonPublicAddress`` unless the URL's host is, or resolves to, a
    public address, or it is a ``trusted`` endpoint (for a URL that
    ServiceNow, not the channel, will fetch)."""
    check_literal(url, trusted)
    parts = urlsplit(url)
    host = parts.hostname or ""
    if literal_address(host) is not None or endpoint_of(url) in trusted:
        return
    resolver = PublicAddressResolver()
    try:
        await resolver.resolve(host, parts.port or (443 if parts.scheme.lower() == "https" else 80), socket.AF_UNSPEC)
    finally:
        await resolver.close()


async def open_url(
    session: aiohttp.ClientSession, method: str, url: str, *, public_only: bool, follow_redirects: bool,
    timeout: aiohttp.ClientTimeout, trusted: AbstractSet[Endpoint] = frozenset(),
) -> aiohttp.ClientResponse:
    """``method url``, following redirects (when asked) one hop at a time, each
    hop checked like the first. The caller releases the answer."""
    for _ in range(MAX_REDIRECTS + 1):
        if public_only:
            check_literal(url, trusted)
        answer = await session.request(method, url, allow_redirects=False, timeout=timeout)
        location = answer.headers.get("Location")
        if not follow_redirects or answer.status not in REDIRECT_STATUSES or not location:
            return answer
        answer.release()
        url = urljoin(url, location)
        if urlsplit(url).scheme.lower() not in ("http", "https"):
            raise EgressRefused("a redirect led off http(s)")
    raise aiohttp.TooManyRedirects(answer.request_info, answer.history)
