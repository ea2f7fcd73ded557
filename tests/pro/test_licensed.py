"""examples/calm end to end on a licensed Rasa Pro: ``rasa data validate``,
``rasa train`` and ``rasa run`` (Rasa Pro's CLI, which needs RASA_LICENSE),
the ServiceNow emulator on both APIs, a handoff started by the overridden
``pattern_human_handoff`` and ended by the agent, with the hand-back flow's
question after the end notice. Skipped without a key (tests/pro/licence.py)."""

import os
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tests.e2e.conftest import channel_options, point_emulator_at
from tests.e2e.harness import QUIET_ENV, RASA, RasaServer
from tests.pro.licence import needs_licence

pytestmark = needs_licence

ROOT = Path(__file__).resolve().parents[2]
CALM = ROOT / "examples" / "calm"
RATING = "How was your chat with the agent?"
CONNECTING = "Connecting you to a live agent (CALM demo). Please wait here."
ENV = {**os.environ, **QUIET_ENV, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}


def rasa_cli(*arguments: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([RASA, *arguments], cwd=CALM, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("licensed")


@pytest.fixture(scope="module")
def calm_model(workdir) -> Path:
    validated = rasa_cli("data", "validate")
    assert validated.returncode == 0, validated.stdout[-3000:] + validated.stderr[-3000:]
    trained = rasa_cli("train", "--fixed-model-name", "calm", "--out", str(workdir))
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    return workdir / "calm.tar.gz"


@pytest.fixture(scope="module", params=("connect", "virtual_agent"))
def calm_rasa(request, workdir, calm_model, emulator, callback) -> Iterator[RasaServer]:
    server = RasaServer(workdir, calm_model, channel_options(emulator, callback, request.param), name=f"calm-{request.param}")
    server.start(timeout=300)
    if request.param == "virtual_agent":
        point_emulator_at(emulator, server)
    yield server
    server.stop()


def test_a_calm_assistant_hands_over_through_its_pattern_and_reacts_to_the_end(calm_rasa, emulator, callback):
    sender = f"calm-{uuid.uuid4().hex[:8]}"
    assert calm_rasa.say(sender, "hi")[0]["text"].startswith("Hello! I'm the virtual assistant (CALM)")
    assert [reply["text"] for reply in calm_rasa.say(sender, "live agent")] == [CONNECTING]
    slots = calm_rasa.slots(sender)
    assert slots["handoff_active"] is True
    chat = slots["live_chat_id"]
    emulator.accept(chat)
    callback.wait_for_text(sender, lambda text: text.startswith("Thank you for contacting support"), timeout=30)
    assert calm_rasa.say(sender, "my laptop is broken") == []
    emulator.close(chat)
    callback.wait_for_text(sender, lambda text: text == RATING, timeout=30)
    assert calm_rasa.slots(sender)["handoff_end_reason"] == "agent_closed"
    assert calm_rasa.say(sender, "good")[0]["text"] == "Thank you for rating the chat!"


def test_several_workers_without_redis_refuse_to_start(workdir, calm_model, emulator, callback, monkeypatch):
    monkeypatch.setenv("SANIC_WORKERS", "2")
    server = RasaServer(workdir, calm_model, channel_options(emulator, callback, "connect"), name="calm-workers")
    with pytest.raises(RuntimeError):
        server.start(timeout=300)
    assert "SANIC_WORKERS=2" in server.log_tail(200) and "redis_url" in server.log_tail(200)
