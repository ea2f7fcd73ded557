"""The emulator's clock: real time by default, frozen or shifted on demand.

Every timestamp the emulator emits (message ``timestamp``/``created_on``, token expiry, idle timeouts, rate-limit
windows) comes from one :class:`Clock` per app, so a test can freeze it (several messages then share one millisecond)
or move it forward (tokens expire, idle sessions are abandoned) without waiting.
"""

from __future__ import annotations

import functools
import time
from datetime import datetime, timezone
from typing import Optional


class Clock:
    """Epoch-millisecond clock that can be frozen at a value or shifted by an offset."""

    def __init__(self) -> None:
        self._frozen_ms: Optional[int] = None
        self._offset_ms = 0

    def now_ms(self) -> int:
        if self._frozen_ms is not None:
            return self._frozen_ms
        return int(time.time() * 1000) + self._offset_ms

    @property
    def frozen(self) -> bool:
        return self._frozen_ms is not None

    def freeze(self, now_ms: Optional[int]) -> None:
        """Freeze at ``now_ms``; ``None`` returns to real time (and drops any offset)."""
        self._frozen_ms = now_ms
        if now_ms is None:
            self._offset_ms = 0

    def advance(self, delta_ms: int) -> None:
        """Move the clock forward (or back, if negative), frozen or not."""
        if self._frozen_ms is not None:
            self._frozen_ms += delta_ms
        else:
            self._offset_ms += delta_ms


def format_glide_datetime(epoch_ms: int) -> str:
    """ServiceNow's ``YYYY-MM-DD HH:MM:SS`` in UTC, the format the Connect UI builds for ``created_on`` [V]."""
    return _format_second(epoch_ms // 1000)


# Every message of every page is formatted on every poll; most share a few recent seconds.
@functools.lru_cache(maxsize=4096)
def _format_second(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
