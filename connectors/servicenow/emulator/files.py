"""Attachments: ServiceNow's Attachment API, the download URL, and the checks both chat APIs apply.

* ``POST /api/now/attachment/file?table_name=&table_sys_id=&file_name=`` with the file as the body and its type as
  ``Content-Type`` [V: the standard Attachment API] answers ``201 {"result": <sys_attachment record>}``. For a Connect
  conversation (``table_sys_id`` = its group) only a member may upload [I]. A type outside ``attachment_types`` or a
  body over ``max_attachment_bytes`` gives 400 [I: the instance's ``glide.attachment.extensions`` /
  ``com.glide.attachment.max_size`` checks; real status not verified].
* ``GET /api/now/attachment/{sys_id}/file`` (authenticated) and ``GET /sys_attachment.do?sys_id=`` (here without a
  login, so a demo page can show an agent's image; a real instance wants a session) serve the bytes.
* Files are kept in memory (``state.files``) and cleared by ``/__emu/reset``.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import quote

from aiohttp import web

from .clock import format_glide_datetime
from .responses import NO_RECORD, connect_forbidden, result, sn_error
from .state import STATE_KEY, EmulatorState, UserRecord, new_sys_id

UPLOAD_PATH = "/api/now/attachment/file"
DOWNLOAD_PATH = "/sys_attachment.do"
CONNECT_TABLE = "live_group_profile"
MAX_FILE_NAME = 255
#: aiohttp's request body cap for the whole app (its default, 1 MB, is below a chat upload).
MAX_REQUEST_BYTES = 64 * 1024 * 1024


@dataclass
class StoredFile:
    sys_id: str
    file_name: str
    content_type: str
    data: bytes
    table_name: str
    table_sys_id: str
    created_ms: int
    base_url: str

    @property
    def download_link(self) -> str:
        return f"{self.base_url}{DOWNLOAD_PATH}?sys_id={self.sys_id}"

    def record(self) -> Dict[str, Any]:
        """The ``sys_attachment`` fields the Attachment API returns [V field names]."""
        return {
            "sys_id": self.sys_id,
            "file_name": self.file_name,
            "content_type": self.content_type,
            "size_bytes": str(len(self.data)),
            "table_name": self.table_name,
            "table_sys_id": self.table_sys_id,
            "download_link": self.download_link,
            "sys_created_on": format_glide_datetime(self.created_ms),
        }


def type_accepted(state: EmulatorState, content_type: Any) -> bool:
    if not isinstance(content_type, str):
        return False
    base = content_type.split(";", 1)[0].strip().lower()
    return any(fnmatch.fnmatchcase(base, pattern.lower()) for pattern in state.config.attachment_types)


def store(
    state: EmulatorState,
    base_url: str,
    file_name: str,
    content_type: str,
    data: bytes,
    table_name: str,
    table_sys_id: str,
) -> StoredFile:
    """Keep one file after the instance's checks; raises a 400 ``ApiError`` when they refuse it."""
    if not file_name or len(file_name) > MAX_FILE_NAME or "/" in file_name:
        raise sn_error(400, "Invalid file name", "'file_name' must be a file name")
    if not type_accepted(state, content_type):
        raise sn_error(400, "Invalid file type", f"Files of type {content_type} are not allowed")
    if len(data) > state.config.max_attachment_bytes:
        raise sn_error(400, "File too large", f"Files larger than {state.config.max_attachment_bytes} bytes are not allowed")
    stored = StoredFile(
        sys_id=new_sys_id(),
        file_name=file_name,
        content_type=content_type.split(";", 1)[0].strip().lower(),
        data=data,
        table_name=table_name,
        table_sys_id=table_sys_id,
        created_ms=state.clock.now_ms(),
        base_url=base_url,
    )
    state.files[stored.sys_id] = stored
    return stored


def records(state: EmulatorState, sys_ids: List[Any]) -> List[Dict[str, Any]]:
    """A Connect message's ``attachments`` (sys_ids, as the UI sends them [V]) as records; 400 for an unknown one."""
    found = []
    for sys_id in sys_ids:
        stored = state.files.get(sys_id) if isinstance(sys_id, str) else None
        if stored is None:
            raise sn_error(400, "Invalid request", "'attachments' must list sys_ids of uploaded attachments")
        found.append(stored.record())
    return found


def check_va_attachment(value: Any) -> Optional[str]:
    """What is wrong with a VA ``message.attachment`` (an object, or a list of them, each with an http(s) ``url``,
    ``contentType`` and ``fileName`` [V field names]); ``None`` when the shape is right."""
    items = value if isinstance(value, list) else [value]
    if not items:
        return "'message.attachment' must not be empty"
    for item in items:
        if not isinstance(item, dict):
            return "'message.attachment' must be an object {url, contentType, fileName}"
        url = item.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            return "'message.attachment.url' must be an http(s) URL"
        for name in ("contentType", "fileName"):
            if not isinstance(item.get(name), str) or not item[name]:
                return f"'message.attachment.{name}' is required"
    return None


def accepted_va_attachments(state: EmulatorState, value: Any) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """The attachments the instance takes and the ones it drops (type not accepted), each as sent."""
    items = [item for item in (value if isinstance(value, list) else [value]) if isinstance(item, dict)]
    kept = [item for item in items if type_accepted(state, item.get("contentType"))]
    dropped = [item for item in items if not type_accepted(state, item.get("contentType"))]
    return kept, dropped


def agent_file(state: EmulatorState, base_url: str, spec: Mapping[str, Any], group: str, table: str) -> Dict[str, Any]:
    """A file an agent sends from the control plane: ``{"name", "content_type", "data_base64"}`` (stored and served
    here) or ``{"name", "content_type", "url"}`` (served elsewhere). Returns ``{url, name, content_type, record?}``."""
    name, content_type = spec.get("name"), spec.get("content_type")
    if not isinstance(name, str) or not name or not isinstance(content_type, str) or "/" not in content_type:
        raise sn_error(400, "Invalid attachment", "an attachment needs 'name' and 'content_type'")
    if isinstance(spec.get("data_base64"), str):
        try:
            data = base64.b64decode(spec["data_base64"], validate=True)
        except (binascii.Error, ValueError):
            raise sn_error(400, "Invalid attachment", "'data_base64' is not base64") from None
        stored = store(state, base_url, name, content_type, data, table, group)
        return {"url": stored.download_link, "name": name, "content_type": stored.content_type, "record": stored.record()}
    url = spec.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise sn_error(400, "Invalid attachment", "an attachment needs 'data_base64' or an http(s) 'url'")
    return {"url": url, "name": name, "content_type": content_type}


def base_url_of(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


# ---------------------------------------------------------------------------------------------------------------------
# Routes


def add_routes(app: web.Application) -> None:
    app.router.add_post(UPLOAD_PATH, upload)
    app.router.add_get("/api/now/attachment/{sys_id}/file", download)
    app.router.add_get(DOWNLOAD_PATH, download)


async def upload(request: web.Request) -> web.Response:
    state: EmulatorState = request.app[STATE_KEY]
    caller: UserRecord = state.user(request["user"])
    table_name = request.query.get("table_name", "")
    table_sys_id = request.query.get("table_sys_id", "")
    file_name = request.query.get("file_name", "")
    if not table_name or not table_sys_id or not file_name:
        raise sn_error(400, "Invalid request", "'table_name', 'table_sys_id' and 'file_name' are required")
    if table_name == CONNECT_TABLE:
        session = state.sessions.get(table_sys_id)
        if session is None:
            raise sn_error(404, *NO_RECORD)
        members = {session.requester.user_name, session.agent.user_name if session.agent else None}
        if caller.user_name not in members:
            raise connect_forbidden("You are not a member of this conversation")
    # Read whole (the request log has read it already); the app's client_max_size bounds it.
    data = await request.read()
    content_type = request.headers.get("Content-Type", "")
    stored = store(state, base_url_of(request), file_name, content_type, data, table_name, table_sys_id)
    response = result(stored.record())
    response.set_status(201)
    return response


async def download(request: web.Request) -> web.Response:
    state: EmulatorState = request.app[STATE_KEY]
    sys_id = request.match_info.get("sys_id") or request.query.get("sys_id", "")
    stored = state.files.get(sys_id)
    if stored is None:
        raise sn_error(404, *NO_RECORD)
    return web.Response(body=stored.data, content_type=stored.content_type, headers=download_headers(stored.file_name))


def download_headers(file_name: str) -> Dict[str, str]:
    """A download, never a page of the emulator's origin (where the console and its secrets live): saved rather than
    shown, its type not second-guessed, and, should a browser render it anyway, in a sandbox with no script and no
    fetches of its own. An ``<img>`` still shows an image: these headers govern navigation, not embedding."""
    safe = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\' else "_" for ch in file_name)
    return {
        "Content-Disposition": f'attachment; filename="{safe}"; filename*=UTF-8\'\'{quote(file_name, safe="")}',
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox; default-src 'none'",
    }
