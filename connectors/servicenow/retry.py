"""How long to wait before trying again: the one place that says it.

Two shapes of waiting, for every retry in the connector:

* ``backoff_delay``: exponential backoff with jitter, for calls whose
  failures many conversations see at once (ServiceNow calls, callback POSTs
  to the user's frontend): retries spread out instead of arriving together.
* ``Pauses``: a fixed schedule whose last pause repeats, for waiting on one
  store to come back (a tracker write, the resume scan, the outbox's backlog).
  Fixed because the documentation promises the numbers (docs/how-it-works.md).
"""

import asyncio
import random
from dataclasses import dataclass
from typing import Tuple

from connectors.servicenow.config import RetryPolicy

__all__ = ["Pauses", "RetryPolicy", "backoff_delay"]


def backoff_delay(policy: RetryPolicy, attempt: int) -> float:
    """The pause after failed attempt ``attempt`` (1-based): exponential with
    "equal jitter", never less than half the step, so retries from many chats
    spread out without collapsing to zero."""
    step = min(policy.max_backoff, policy.backoff * (2 ** (attempt - 1)))
    return step / 2 + random.uniform(0, step / 2)


@dataclass(frozen=True)
class Pauses:
    """Pauses between attempts, the last one repeated: ``Pauses((1, 2, 5))``
    waits 1, 2, 5, 5, ... seconds."""

    delays: Tuple[float, ...]

    def after(self, attempt: int) -> float:
        """The pause after failed attempt ``attempt`` (0-based)."""
        return self.delays[min(attempt, len(self.delays) - 1)]

    async def sleep(self, attempt: int) -> None:
        await asyncio.sleep(self.after(attempt))


#: Waiting for a store to come back while something waits in the process
#: (outbox items to store or post, a socket.io reader): short, since each
#: retry is cheap and the user is there.
STORE_WAIT = Pauses((0.5, 1.0, 2.0, 5.0))
#: Saving what a failing store refused once it is back (a record's removal,
#: the end of a handoff, the resume scan): 1, 2, 5, 10, then every 30 s.
STORE_RECOVERY = Pauses((1.0, 2.0, 5.0, 10.0, 30.0))
#: The same for work that goes stale and is then given up (a hand-back turn
#: out of band, a lock Redis did not release): one try after each pause,
#: 18 s in all.
BRIEF_RECOVERY = Pauses((1.0, 2.0, 5.0, 10.0))
