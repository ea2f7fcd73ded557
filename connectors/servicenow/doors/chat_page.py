"""The reference chat page for the end user (``chat_page: true``): served at
``GET /webhooks/<door>/chat``, from ``connectors/servicenow/webchat/``."""

from pathlib import Path

from sanic import Blueprint, response
from sanic.request import Request
from sanic.response import HTTPResponse

from connectors.servicenow import webchat
from connectors.servicenow.payloads import PayloadError

CHAT_PAGE_DIR = Path(__file__).resolve().parent.parent / "webchat"
CHAT_PAGE_FILES = {
    "index.html": "text/html; charset=utf-8",
    "webchat.css": "text/css; charset=utf-8",
    "webchat.js": "text/javascript; charset=utf-8",
}


async def chat_asset(name: str) -> HTTPResponse:
    """A file of the reference chat page; only the known ones, never a path."""
    content_type = CHAT_PAGE_FILES.get(name)
    if content_type is None:
        error = PayloadError(404, "NotFound", "No such file.")
        return response.json(error.body(), status=404)
    body = (CHAT_PAGE_DIR / name).read_bytes()
    return response.raw(body, content_type=content_type, headers={"Cache-Control": "no-cache", **webchat.HEADERS})


def add_chat_page(blueprint: Blueprint) -> None:
    @blueprint.route("/chat", methods=["GET"], stream=True)
    async def chat_page(_: Request) -> HTTPResponse:
        return await chat_asset("index.html")

    @blueprint.route("/chat/<name>", methods=["GET"], stream=True)
    async def chat_page_asset(_: Request, name: str) -> HTTPResponse:
        return await chat_asset(name)
