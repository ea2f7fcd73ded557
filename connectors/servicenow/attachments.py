"""Files between the user and the agent.

User to agent: the webhook body may carry ``"attachment": {"url", "content_type",
"name", "size"?}`` (checked in payloads.py). During a handoff it is checked
against ``attachment_types``, ``max_attachment_bytes`` and ``attachment_hosts``
before anything is sent; ServiceNow drops a file it does not take without a
word, so a refusal is said to the user here (``messages.attachment_refused``).

* Virtual Agent fetches the file itself from the URL (``message.attachment``);
  the size is the one the client declared, else the ``Content-Length`` of a
  ``HEAD`` on the URL; a file whose size cannot be learned is refused.
* Connect has no URL field: the connector downloads the file (never more than
  ``max_attachment_bytes``), uploads it with ServiceNow's Attachment API to the
  conversation and posts a message whose ``attachments`` lists its sys_id.

Agent to user: both backends turn an agent's file into Rasa's ``image`` (image
types) or ``attachment`` (anything else, the file name as text) message fields.
"""

import asyncio
import contextlib
import fnmatch
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator, Dict, FrozenSet, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import aiohttp

from connectors.servicenow.egress import EgressRefused, Endpoint, open_url, resolve_public

logger = logging.getLogger(__name__)

#: What ServiceNow's chat takes by default [I]: images, PDF, plain text and
#: Office documents. An instance's ``glide.attachment.extensions`` may narrow
#: or widen it; ``attachment_types`` follows the instance.
DEFAULT_ATTACHMENT_TYPES: Tuple[str, ...] = (
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/bmp",
    "image/webp",
    "application/pdf",
    "text/plain",
    "text/csv",
    "application/msword",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.ms-excel",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
)
#: 10 MB [I]: well inside ServiceNow's ``com.glide.attachment.max_size``, and a
#: size a chat upload should not exceed.
DEFAULT_MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024
#: Where Connect keeps a conversation's files [I]: the conversation record.
CONNECT_ATTACHMENT_TABLE = "live_group_profile"
ATTACHMENT_UPLOAD_PATH = "/api/now/attachment/file"


@dataclass(frozen=True)
class UserAttachment:
    """A file the user sends, by URL (the webhook's ``attachment`` object)."""

    url: str
    content_type: str
    name: str
    #: Bytes, as the client declared it; None when it did not.
    size: Optional[int] = None

    def wire(self) -> Dict[str, Any]:
        """As Rasa's message metadata carries it outside a handoff."""
        data: Dict[str, Any] = {"url": self.url, "content_type": self.content_type, "name": self.name}
        if self.size is not None:
            data["size"] = self.size
        return data


class AttachmentRefused(Exception):
    """The file is not passed on; ``reason`` says why (for logs, and the ``{reason}`` placeholder)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class AttachmentPolicy:
    types: Tuple[str, ...] = DEFAULT_ATTACHMENT_TYPES
    max_bytes: int = DEFAULT_MAX_ATTACHMENT_BYTES
    #: Host names the URL may point at (``*`` wildcards), wherever they are; empty: public addresses.
    hosts: Tuple[str, ...] = ()
    #: Without ``hosts``: endpoints allowed besides public addresses (the ServiceNow instance's own).
    trusted: FrozenSet[Endpoint] = frozenset()
    timeout: float = 10.0

    @property
    def follows_redirects(self) -> bool:
        # A redirect could lead off the allowed hosts: with a list, none is followed.
        return not self.hosts

    def type_allowed(self, content_type: str) -> bool:
        base = content_type.split(";", 1)[0].strip().lower()
        return any(fnmatch.fnmatchcase(base, pattern.lower()) for pattern in self.types)

    def host_allowed(self, url: str) -> bool:
        if not self.hosts:
            return True
        host = (urlsplit(url).hostname or "").lower()
        return any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in self.hosts)

    def check_declared(self, attachment: UserAttachment) -> None:
        """What can be decided without a request: type, host and a declared size."""
        if not self.type_allowed(attachment.content_type):
            raise AttachmentRefused(f"type {attachment.content_type} is not accepted")
        if not self.host_allowed(attachment.url):
            raise AttachmentRefused("the file's host is not allowed")
        if attachment.size is not None and attachment.size > self.max_bytes:
            raise AttachmentRefused(f"{attachment.size} bytes is over the limit of {self.max_bytes}")

    @property
    def public_only(self) -> bool:
        """Without a host list, only public addresses may be asked (egress.py)."""
        return not self.hosts

    async def check_target(self, attachment: UserAttachment) -> None:
        """Type, host, declared size, and without a host list that the URL's host
        is on the public internet: for a file ServiceNow fetches itself."""
        self.check_declared(attachment)
        if self.public_only:
            try:
                await resolve_public(attachment.url, self.trusted)
            except EgressRefused as error:
                raise _refused_address(attachment, error) from None
            except OSError as error:
                raise AttachmentRefused(f"the file's host could not be resolved ({type(error).__name__})") from None

    async def check_size(self, attachment: UserAttachment, session: aiohttp.ClientSession) -> int:
        """The file's size: declared, else the ``Content-Length`` of a HEAD; refused when over the limit or unknown."""
        if attachment.size is not None:
            await self.check_target(attachment)
            return attachment.size
        self.check_declared(attachment)
        async with self._open(session, "HEAD", attachment) as answer:
            length = answer.headers.get("Content-Length") if answer.status < 400 else None
        if length is None or not length.isdigit():
            raise AttachmentRefused("the file's size is unknown")
        size = int(length)
        if size > self.max_bytes:
            raise AttachmentRefused(f"{size} bytes is over the limit of {self.max_bytes}")
        return size

    async def download(self, attachment: UserAttachment, session: aiohttp.ClientSession) -> bytes:
        """The file's bytes, read no further than the limit (Connect uploads them)."""
        self.check_declared(attachment)
        async with self._open(session, "GET", attachment) as answer:
            if answer.status >= 400:
                raise AttachmentRefused(f"the file could not be fetched (HTTP {answer.status})")
            length = answer.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > self.max_bytes:
                raise AttachmentRefused(f"{length} bytes is over the limit of {self.max_bytes}")
            data = bytearray()
            try:
                # Chunk by chunk: one read returns what has arrived, not what was asked for.
                async for chunk in answer.content.iter_chunked(64 * 1024):
                    data += chunk
                    if len(data) > self.max_bytes:
                        raise AttachmentRefused(f"the file is over the limit of {self.max_bytes} bytes")
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
                raise AttachmentRefused(f"the file could not be fetched ({type(error).__name__})") from None
        return bytes(data)

    @contextlib.asynccontextmanager
    async def _open(self, session: aiohttp.ClientSession, method: str, attachment: UserAttachment) -> AsyncIterator[aiohttp.ClientResponse]:
        """The answer to ``method`` on the file's URL, every refusal and failure
        turned into ``AttachmentRefused``."""
        try:
            answer = await open_url(
                session, method, attachment.url, public_only=self.public_only,
                follow_redirects=self.follows_redirects, timeout=aiohttp.ClientTimeout(total=self.timeout),
                trusted=self.trusted,
            )
        except EgressRefused as error:
            raise _refused_address(attachment, error) from None
        except aiohttp.ClientConnectorError as error:
            if isinstance(error.os_error, EgressRefused):
                raise _refused_address(attachment, error.os_error) from None
            raise AttachmentRefused(f"the file could not be reached ({type(error).__name__})") from None
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
            raise AttachmentRefused(f"the file could not be reached ({type(error).__name__})") from None
        try:
            yield answer
        finally:
            answer.release()


def _refused_address(attachment: UserAttachment, error: EgressRefused) -> AttachmentRefused:
    # The host only, never the whole URL: a signed upload URL is a credential.
    logger.warning(
        "Refused a user's file on %s: %s (attachment_hosts allows internal hosts).",
        urlsplit(attachment.url).hostname, error,
    )
    return AttachmentRefused("the file's address is not on the public internet")


def human_size(size: int) -> str:
    """``10 MB``, ``512 KB``: for the ``{max_size}`` placeholder."""
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if size >= scale:
            value = size / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size} bytes"


def refusal_placeholders(attachment: UserAttachment, settings: Any) -> Dict[str, str]:
    """The placeholders of ``attachment_refused``: ``{name}`` and ``{max_size}``."""
    return {"name": attachment.name, "max_size": human_size(settings.max_attachment_bytes)}


def is_image(content_type: Optional[str]) -> bool:
    return content_type is not None and content_type.split(";", 1)[0].strip().lower().startswith("image/")


def agent_file_fields(url: str, content_type: Optional[str], name: Optional[str]) -> Tuple[str, Dict[str, Any]]:
    """Text and Rasa message fields for a file the agent sent."""
    if is_image(content_type):
        return name or "", {"image": url}
    return name or url, {"attachment": url}


def parse_types(value: Any) -> Tuple[str, ...]:
    """``attachment_types``: a list (or comma-separated string) of MIME types, ``*`` allowed (``image/*``)."""
    items: Sequence[Any] = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ValueError("expected a list of MIME types such as image/png or image/*")
    types = tuple(str(item).strip().lower() for item in items if str(item).strip())
    for item in types:
        if item.count("/") != 1 or any(char.isspace() for char in item):
            raise ValueError(f"'{item}' is not a MIME type such as image/png or image/*")
    return types


def parse_hosts(value: Any) -> Tuple[str, ...]:
    """``attachment_hosts``: host names (``*.example.com`` allowed)."""
    items: Sequence[Any] = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ValueError("expected a list of host names")
    hosts = tuple(str(item).strip().lower() for item in items if str(item).strip())
    for host in hosts:
        if any(char.isspace() or char in "/:@" for char in host):
            raise ValueError(f"'{host}' is not a host name")
    return hosts
