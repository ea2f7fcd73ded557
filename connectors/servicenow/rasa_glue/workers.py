"""Several Sanic workers in one ``rasa run``.

With ``SANIC_WORKERS`` > 1 (and a lock store other than in-memory) Rasa serves
with that many worker processes: ``rasa.core.utils.number_of_sanic_workers``,
read by ``rasa/core/run.py`` in Rasa 3.6 and in Rasa Pro (which spawns its
workers through Sanic's ``AppLoader`` from 3.20). Each worker builds its own
channel, so without a store they share, a handoff opened by one worker is
unknown to the others: a user's next message, landing on another worker,
would reach the bot instead of the agent. Workers are replicas; they need
``redis_url`` as replicas do (docs/deployment.md).
"""

import os
from typing import Optional

from connectors.servicenow.errors import ConfigurationError

#: The variable Rasa reads (``rasa.constants.ENV_SANIC_WORKERS`` in both Rasas).
SANIC_WORKERS_ENV = "SANIC_WORKERS"


def requested_workers() -> int:
    """The worker count asked for in ``SANIC_WORKERS``, read as Rasa reads it
    (not a whole number, or less than 1: one worker)."""
    try:
        value = int(os.environ.get(SANIC_WORKERS_ENV, "1"))
    except ValueError:
        return 1
    return max(value, 1)


def check_workers(redis_url: Optional[str]) -> None:
    """Refuse to start several workers that would not share the handoff state."""
    workers = requested_workers()
    if workers > 1 and not redis_url:
        raise ConfigurationError(
            f"{SANIC_WORKERS_ENV}={workers} asks Rasa for {workers} worker processes, and each would keep its own "
            "handoff state: a user's message landing on another worker than the one that opened the chat would "
            "reach the bot instead of the agent. Set 'redis_url' in the channel's section of credentials.yml "
            "(the Redis the workers share, as replicas do; docs/deployment.md), or run one worker "
            f"({SANIC_WORKERS_ENV}=1) per process."
        )
