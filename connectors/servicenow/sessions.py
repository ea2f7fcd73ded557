"""The connector's HTTP client sessions: made on first use (so a session
belongs to the event loop that serves requests, not to whatever loop built
the channel), made again if something closed it, and closed once at the end."""

from typing import Callable, Optional

import aiohttp


class LazySession:
    def __init__(self, make: Callable[[], aiohttp.ClientSession]) -> None:
        self._make = make
        self._session: Optional[aiohttp.ClientSession] = None

    def get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = self._make()
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
