"""Assembly: the aiohttp application, and a helper to run it inside an existing event loop."""

from __future__ import annotations

import secrets
from types import TracebackType
from typing import Optional, Type

from aiohttp import web

from . import agent_console, connect, control, files, middleware, oauth, table, va
from .config import EmulatorConfig
from .state import STATE_KEY, EmulatorState


def new_control_token() -> str:
    return secrets.token_urlsafe(24)


def create_app(config: Optional[EmulatorConfig] = None, control_token: Optional[str] = None) -> web.Application:
    """A fresh emulator application with its own state (``app[STATE_KEY]``) and control token
    (``app[middleware.TOKEN_KEY]``; generated unless given)."""
    app = web.Application(
        client_max_size=files.MAX_REQUEST_BYTES,
        middlewares=[
            middleware.request_log,
            middleware.housekeeping,
            middleware.faults({"connect": connect.session_of, "va": va.session_of, "table": table.session_of}),
            middleware.errors,
            middleware.control_guard,
            middleware.auth,
            middleware.rate_limit,
            middleware.strict_headers,
        ]
    )
    state = app[STATE_KEY] = EmulatorState(config or EmulatorConfig())
    app[middleware.TOKEN_KEY] = control_token or new_control_token()
    oauth.add_routes(app)
    connect.add_routes(app)
    va.add_routes(app)
    table.add_routes(app)
    files.add_routes(app)
    control.add_routes(app)
    agent_console.add_routes(app)

    async def close_callbacks(_: web.Application) -> None:
        await state.callbacks.close()

    app.on_cleanup.append(close_callbacks)
    return app


class RunningEmulator:
    """An emulator serving on a socket. ``url`` has no trailing slash; ``close()`` stops it."""

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self._runner = runner
        self.host = host
        self.port = port
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def app(self) -> web.Application:
        assert self._runner.app is not None
        return self._runner.app

    @property
    def state(self) -> EmulatorState:
        return self.app[STATE_KEY]

    @property
    def control_token(self) -> str:
        """The control token (header ``X-Emulator-Token``); browsers need it for the control plane."""
        return self.app[middleware.TOKEN_KEY]

    @property
    def console_url(self) -> str:
        """The agent console with the token in its fragment (never sent to a server, read by the page)."""
        return f"{self.url}/__emu/console#token={self.control_token}"

    async def close(self) -> None:
        await self._runner.cleanup()

    async def __aenter__(self) -> "RunningEmulator":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.close()


async def start_emulator(
    config: Optional[EmulatorConfig] = None, host: str = "127.0.0.1", port: int = 0, control_token: Optional[str] = None
) -> RunningEmulator:
    """Serve a new emulator on ``host:port`` in the running event loop; ``port=0`` picks a free port."""
    # aiohttp's access log is off: the request_log middleware logs one line per request, without credentials.
    runner = web.AppRunner(create_app(config, control_token), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    return RunningEmulator(runner, bound_host, bound_port)
