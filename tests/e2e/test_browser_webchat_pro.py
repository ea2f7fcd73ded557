"""The stock rasa-webchat widget against the socket.io door on **Rasa Pro**:
the tests of test_browser_webchat.py, with the server a Rasa Pro process
(.venv-pro, rasa-pro 3.21 on sanic 25 and python-socketio 5.16) serving the
door the way ``rasa run`` mounts it (tests/pro/serve.py; ``rasa run`` itself
needs a licence). Runs in the Rasa 3.6 suite, which has Playwright and the
browser. Skipped with the reason without .venv-pro (made by ``make test``
before the suites) unless REQUIRE_RASA_PRO_TEST is set. Screenshots go to
``test-output/rasa-pro/``."""

import os
from pathlib import Path
from typing import Iterator, Tuple

import pytest

import tests.e2e.test_browser_webchat as stock
from scripts.rasa_webchat import Bundle, PageServer, widget_options
from tests.e2e.conftest import BACKENDS, channel_options
from tests.e2e.harness import Emulator, free_port
from tests.e2e.test_browser import browser  # noqa: F401 (a fixture, used by name)
from tests.e2e.test_browser_webchat import (  # noqa: F401 (fixtures and tests, collected here against Rasa Pro)
    page_server,
    socketio_rasa,
    test_a_handoff_in_the_stock_rasa_webchat_widget,
    test_agent_markup_and_script_links_do_not_run_in_the_widget,
    webchat_bundle,
)
from tests.pro.served import ServedChannel

ROOT = Path(__file__).resolve().parents[2]
PRO_PYTHON = ROOT / ".venv-pro" / "bin" / "python"
#: Written by scripts/venv-pro.sh once the environment is complete: a half-made one counts as missing.
PRO_READY = ROOT / ".venv-pro" / ".installed"


@pytest.fixture(scope="module", autouse=True)
def _screenshots_of_their_own():
    original = stock.ROOT
    stock.ROOT = ROOT / "test-output" / "rasa-pro"
    yield
    stock.ROOT = original


@pytest.fixture(scope="module", params=BACKENDS)
def webchat(request, webchat_bundle: Bundle, e2e_dir, emulator: Emulator, callback) -> Iterator[Tuple[ServedChannel, PageServer]]:  # noqa: F811
    if not PRO_READY.exists():
        reason = "the Rasa Pro virtualenv .venv-pro is missing or incomplete (make test makes it before the suites)"
        if os.environ.get("REQUIRE_RASA_PRO_TEST"):
            pytest.fail(reason)
        pytest.skip(reason)
    backend = request.param
    options = channel_options(emulator, callback, backend)
    for webhook_only in ("callback_url", "chat_page"):
        options.pop(webhook_only, None)
    options.update(user_message_evt="user_uttered", bot_message_evt="bot_uttered",
                   session_persistence=True, socketio_path=stock.SOCKETIO_PATH)
    port = free_port()
    page = PageServer(webchat_bundle, widget_options(f"http://127.0.0.1:{port}", stock.SOCKETIO_PATH, storage="local")).start()
    # As a team would: the page's origin is allowed by Rasa's CORS, nothing else.
    server = ServedChannel(e2e_dir / f"pro-webchat-{backend}.log", options, None, channel=stock.CHANNEL,
                           python=str(PRO_PYTHON), cors=page.url.rstrip("/"), port=port)
    server.backend = backend  # type: ignore[attr-defined]
    try:
        server.wait_until_serving()
        yield server, page
    finally:
        server.stop()
        page.stop()
