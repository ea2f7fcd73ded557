"""Several Sanic workers (``SANIC_WORKERS`` > 1) are replicas: without a store
they share, the channel refuses to start, and says why and what to set."""

import pytest

from connectors.servicenow import ServiceNowInput, ServiceNowSocketIOInput
from connectors.servicenow.errors import ConfigurationError
from connectors.servicenow.rasa_glue.workers import requested_workers
from connectors.servicenow.store.redis import RedisStore

OPTIONS = {"instance_url": "https://acme.service-now.com", "username": "u", "password": "p", "queue_id": "q"}


@pytest.mark.parametrize("door", [ServiceNowInput, ServiceNowSocketIOInput])
def test_several_workers_without_redis_url_refuse_to_start(door, monkeypatch):
    monkeypatch.setenv("SANIC_WORKERS", "4")
    with pytest.raises(ConfigurationError) as refused:
        door.from_credentials(dict(OPTIONS))
    message = str(refused.value)
    assert "SANIC_WORKERS=4" in message and "redis_url" in message and "SANIC_WORKERS=1" in message


@pytest.mark.parametrize("door", [ServiceNowInput, ServiceNowSocketIOInput])
def test_several_workers_with_redis_url_start_as_replicas(door, monkeypatch):
    monkeypatch.setenv("SANIC_WORKERS", "2")
    channel = door.from_credentials({**OPTIONS, "redis_url": "redis://127.0.0.1:1/0"})
    assert isinstance(channel.core.store, RedisStore)


@pytest.mark.parametrize("value, workers", [(None, 1), ("1", 1), ("3", 3), ("0", 1), ("-2", 1), ("many", 1)])
def test_the_worker_count_is_read_as_rasa_reads_it(value, workers, monkeypatch):
    if value is None:
        monkeypatch.delenv("SANIC_WORKERS", raising=False)
    else:
        monkeypatch.setenv("SANIC_WORKERS", value)
    assert requested_workers() == workers
