"""Where state lives: the channel's Redis (``redis_url``) and Rasa's tracker
and lock stores from ``endpoints.yml``."""

from pathlib import Path
from typing import Any, List, Optional
from urllib.parse import urlparse

from connectors.servicenow.doctor.findings import Finding, ok, problem, warning

REDIS_TIMEOUT_S = 3.0


def masked(url: str) -> str:
    """A Redis URL without its password."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
    return parsed._replace(netloc=netloc).geturl()


def ping_redis(topic: str, what: str, url: Optional[str] = None, **connection: Any) -> Finding:
    """PING one Redis server, given as a URL or as ``redis.Redis`` arguments."""
    import redis

    where = masked(url) if url else f"{connection.get('host')}:{connection.get('port')}"
    options = {"socket_timeout": REDIS_TIMEOUT_S, "socket_connect_timeout": REDIS_TIMEOUT_S}
    try:
        client = redis.Redis.from_url(url, **options) if url else redis.Redis(**connection, **options)
    except ValueError as error:
        return problem(topic, f"{what}: {where} is not a Redis URL ({error}).", "Use redis://[:password@]host:port/db.")
    try:
        client.ping()
    except redis.exceptions.AuthenticationError:
        return problem(topic, f"{what}: Redis at {where} refused the password.", "Check the password in the URL.")
    except redis.exceptions.ResponseError as error:
        # NOAUTH and friends: a server that wants credentials it did not get.
        return problem(topic, f"{what}: Redis at {where} refused the PING ({error}).", "Check the credentials.")
    except redis.exceptions.RedisError as error:
        return problem(topic, f"{what}: cannot reach Redis at {where} ({type(error).__name__}).",
                       "Check host, port and that redis-server runs and accepts connections from here.")
    finally:
        client.close()
    return ok(topic, f"{what}: Redis at {where} answers PING.")


def check_redis_option(redis_url: str) -> Finding:
    return ping_redis("redis", "redis_url", url=redis_url)


#: The lock store to name in endpoints.yml when several replicas share Redis (rasa_glue/lock_store.py).
ATOMIC_LOCK_STORE = "connectors.servicenow.rasa_glue.lock_store.AtomicRedisLockStore"
#: Rasa's Redis lock stores, whose ticket lock is read, changed and written back.
RACY_LOCK_STORES = ("redis", "RedisLockStore", "rasa.core.lock_store.RedisLockStore", "concurrent_redis")


def check_endpoints(path: Path, replicas: bool = False) -> List[Finding]:
    """``replicas``: the channel has ``redis_url``, so several Rasa processes
    share conversations and need a lock store that is safe across them."""
    from rasa.shared.exceptions import RasaException
    from rasa.utils.endpoints import EndpointConfig

    from connectors.servicenow.rasa_glue.versions import read_config_file

    topic = "endpoints"
    if not path.is_file():
        return [problem(topic, f"{path} does not exist.", "Pass --endpoints with the file rasa run uses.")]
    try:
        # What rasa run's AvailableEndpoints.read_endpoints reads, without importing the tracker stores (TensorFlow).
        content = read_config_file(path)
        tracker_store, lock_store = (
            EndpointConfig.from_dict(content[key]) if content.get(key) else None for key in ("tracker_store", "lock_store")
        )
    except (RasaException, OSError, ValueError) as error:
        return [problem(topic, f"rasa run cannot read {path}: {error}")]
    found = []
    kind = (tracker_store.type or "in_memory") if tracker_store else "in_memory"
    if kind in ("in_memory", "InMemoryTrackerStore"):
        found.append(warning(topic, "Tracker store in memory: live handoffs are lost when Rasa restarts.",
                             "Use a persistent tracker store (redis, sql, ...) in endpoints.yml."))
    else:
        found.append(ok(topic, f"Tracker store: {kind}."))
        if kind == "redis":
            found.append(_ping_endpoint(topic, "tracker_store", tracker_store))
    found += _check_lock_store(topic, lock_store, replicas)
    return found


def _check_lock_store(topic: str, lock_store: Any, replicas: bool) -> List[Finding]:
    kind = (lock_store.type or "in_memory") if lock_store else "in_memory"
    found = []
    if kind in RACY_LOCK_STORES or kind == ATOMIC_LOCK_STORE:
        found.append(_ping_endpoint(topic, "lock_store", lock_store))
    if not replicas:
        if kind not in RACY_LOCK_STORES and kind != ATOMIC_LOCK_STORE:
            found.append(ok(topic, f"Lock store: {kind} (enough for one Rasa process)."))
        return found
    if kind in RACY_LOCK_STORES:
        found.append(warning(
            topic,
            f"Lock store '{kind}' with redis_url (several replicas): Rasa's Redis lock store reads, changes and writes "
            "back its ticket lock, so replicas racing on one conversation lose tickets; turns then wait up to 60 s "
            "and fail (LockError).",
            f"Use 'type: {ATOMIC_LOCK_STORE}' with the same options (docs/deployment.md).",
        ))
    elif kind == ATOMIC_LOCK_STORE:
        found.append(ok(topic, "Lock store: AtomicRedisLockStore, safe across replicas."))
    else:
        found.append(warning(
            topic,
            f"Lock store '{kind}' with redis_url (several replicas): each replica locks conversations for itself, so "
            "two replicas may run turns of one conversation at once.",
            f"Use 'type: {ATOMIC_LOCK_STORE}' on the replicas' Redis (docs/deployment.md).",
        ))
    return found


def _ping_endpoint(topic: str, what: str, endpoint: Any) -> Finding:
    kwargs = endpoint.kwargs or {}
    return ping_redis(
        topic,
        what,
        host=endpoint.url or "localhost",
        port=int(kwargs.get("port") or 6379),
        db=int(kwargs.get("db") or 0),
        password=kwargs.get("password") or None,
        ssl=bool(kwargs.get("use_ssl", False)),
    )
