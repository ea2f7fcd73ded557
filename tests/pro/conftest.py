"""What the Rasa Pro tests share: each module gets its own emulator and callback receiver (the module's servers
point at them, and a module's tests look back through every request of its run)."""

from typing import Iterator

import pytest

from tests.e2e.harness import CallbackReceiver, Emulator


@pytest.fixture(scope="module")
def emulator(request, tmp_path_factory) -> Iterator[Emulator]:
    running = Emulator(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]) / "emulator.log")
    running.configure(request_log_limit=100_000)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def callback() -> Iterator[CallbackReceiver]:
    receiver = CallbackReceiver()
    yield receiver
    receiver.stop()
