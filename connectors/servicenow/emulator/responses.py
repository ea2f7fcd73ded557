"""Response bodies shared by the routes: ServiceNow's error envelopes and the control plane's errors.

Handlers raise :class:`ApiError` wherever they detect a problem; a middleware turns it into the response it carries.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from aiohttp import web

#: 401 body for /api routes [envelope V 4.1, message text I].
NOT_AUTHENTICATED = ("User Not Authenticated", "Required to provide Auth information")
#: 404 body for unknown records [envelope V, text I].
NO_RECORD = ("No Record found", "Record doesn't exist or ACL restricts the record retrieval")


class ApiError(Exception):
    """Abort the current request with ``response``."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def envelope(message: str, detail: Optional[str]) -> Dict[str, Any]:
    """ServiceNow's REST error body ``{"error": {"message", "detail"}, "status": "failure"}`` [V 4.1]."""
    return {"error": {"message": message, "detail": detail}, "status": "failure"}


def sn_error(
    status: int, message: str, detail: Optional[str] = None, headers: Optional[Mapping[str, str]] = None
) -> ApiError:
    return ApiError(web.json_response(envelope(message, detail), status=status, headers=headers))


def connect_forbidden(reason: str) -> ApiError:
    """Connect's 403 body is ``{"result": "<reason>"}``: the Connect UI shows ``response.data.result`` [V]."""
    return ApiError(web.json_response({"result": reason}, status=403))


def oauth_error(status: int, error: str, description: str) -> ApiError:
    """Error body of ``/oauth_token.do`` in the standard OAuth form [I: the real body is not verified]."""
    return ApiError(web.json_response({"error": error, "error_description": description}, status=status))


def control_error(status: int, text: str) -> ApiError:
    """Control-plane errors are plain ``{"error": "<text>"}``: they are for test authors, not a ServiceNow shape."""
    return ApiError(web.json_response({"error": text}, status=status))


def result(value: Any) -> web.Response:
    """Every successful /api/now/connect answer is ``{"result": ...}`` [V]."""
    return web.json_response({"result": value})
