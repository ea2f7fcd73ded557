"""Where Rasa's ``register`` mounts the doors' routes, on the installed Rasa and
Sanic: under ``/webhooks/<name>`` as ``rasa run`` mounts them, and at the root
when a program registers the channel without a route (sanic 21 and 22 then
fall back to the blueprint's own prefix; Rasa Pro 3.21's ``register`` passes an
empty one for sanic 25)."""

import uuid

import pytest
from rasa.core.channels.channel import register
from sanic import Sanic

from connectors.servicenow import ServiceNowInput, ServiceNowSocketIOInput

OPTIONS = {"instance_url": "https://acme.service-now.com", "username": "u", "password": "p", "queue_id": "q"}


def paths(app: Sanic):
    return sorted({"/" + route.path.lstrip("/") for route in app.router.routes})


@pytest.mark.parametrize("door", [ServiceNowInput, ServiceNowSocketIOInput])
@pytest.mark.parametrize("route, prefix", [("/webhooks/", "/webhooks/{name}"), (None, "")])
def test_routes_land_where_rasa_mounts_them(door, route, prefix):
    channel = door.from_credentials({**OPTIONS, "redis_prefix": f"prefix-{uuid.uuid4().hex}:"})
    app = Sanic(f"prefix_{uuid.uuid4().hex[:8]}")
    register([channel], app, route=route)
    app.router.finalize()
    found = paths(app)
    expected = prefix.format(name=channel.name())
    assert f"{expected}/webhook" in found, found
    assert not [path for path in found if "connectors" in path], found
