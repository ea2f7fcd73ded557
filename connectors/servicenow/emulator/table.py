"""A sliver of the Table API: ``GET /api/now/table/sys_cs_provider_application``, so a client can check that the
``appInboundId`` it sends names a provider application (what the connector's doctor does).

Only ``sysparm_query`` terms of the form ``field=value`` joined by ``^`` are understood, plus ``sysparm_fields`` and
``sysparm_limit`` [V Table API parameters]; records carry ``sys_id``, ``name`` and ``inbound_id``.
"""

from __future__ import annotations

import hashlib
from typing import Any, Dict, List

from aiohttp import web

from .responses import result, sn_error
from .state import STATE_KEY

PROVIDER_APPS_PATH = "/api/now/table/sys_cs_provider_application"


def add_routes(app: web.Application) -> None:
    app.router.add_get(PROVIDER_APPS_PATH, provider_applications)


async def provider_applications(request: web.Request) -> web.Response:
    config = request.app[STATE_KEY].config
    records: List[Dict[str, Any]] = [
        # A stable sys_id per Inbound Id, so repeated reads agree.
        {"sys_id": hashlib.md5(inbound_id.encode()).hexdigest(), "name": name, "inbound_id": inbound_id}
        for inbound_id, name in config.va_provider_applications.items()
    ]
    for term in filter(None, request.query.get("sysparm_query", "").split("^")):
        field, sep, value = term.partition("=")
        if not sep:
            raise sn_error(400, "Invalid query", f"Only field=value terms are emulated, got {term!r}")
        records = [record for record in records if str(record.get(field)) == value]
    fields = [name for name in request.query.get("sysparm_fields", "").split(",") if name]
    if fields:
        records = [{name: record.get(name, "") for name in fields} for record in records]
    limit = request.query.get("sysparm_limit")
    if limit is not None:
        if not limit.isdigit():
            raise sn_error(400, "Invalid sysparm_limit", f"{limit!r} is not a number")
        records = records[: int(limit)]
    return result(records)
