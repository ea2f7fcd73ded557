"""The connector as a team would adopt it: build the wheel, install it into a
fresh virtual environment, make and train a minimal Rasa project next to it,
check it with the doctor and hand a conversation over to the emulator that
the installed package brings.

Nothing comes from this checkout at run time: the processes run in the new
environment, in the project's folder, without PYTHONPATH. Dependencies come
from a wheelhouse under build/install-test/, made once per constraints.txt and
dependency list (the first run downloads about 900 MB); the install itself is
``--no-index``, so a dependency the wheel does not declare is missing here as
it would be for a user.
"""

import hashlib
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Dict, List

import pytest
import requests

from tests.e2e.harness import CallbackReceiver, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / "constraints.txt"
WHEELHOUSES = ROOT / "build" / "install-test"
QUEUE_ID = "3f5a6a4c9b1e4d2f8c7e6b5a4d3c2b1a"
RASA_36 = "rasa==3.6.21"

pytestmark = [pytest.mark.install, pytest.mark.timeout(2400)]

DOMAIN = """\
version: "3.1"
intents: [greet, human_handoff]
responses:
  utter_greet:
    - text: "Hello from the minimal bot."
  utter_handoff:
    - custom:
        handoff: {}
slots:
  handoff_active:          {type: bool, initial_value: false, influence_conversation: false, mappings: [{type: custom}]}
  live_chat_id:            {type: text, influence_conversation: false, mappings: [{type: custom}]}
  live_chat_user:          {type: text, influence_conversation: false, mappings: [{type: custom}]}
  live_chat_last_updated:  {type: any,  influence_conversation: false, mappings: [{type: custom}]}
  live_chat_seen_ids:      {type: any,  influence_conversation: false, mappings: [{type: custom}]}
session_config:
  session_expiration_time: 60
  carry_over_slots_to_new_session: true
"""
CONFIG = """\
recipe: default.v1
language: en
assistant_id: install_test
pipeline:
  - name: KeywordIntentClassifier
policies:
  - name: RulePolicy
"""
NLU = """\
version: "3.1"
nlu:
  - intent: greet
    examples: |
      - hi
      - hello
  - intent: human_handoff
    examples: |
      - live agent
      - talk to a human
"""
RULES = """\
version: "3.1"
rules:
  - rule: greet
    steps:
      - intent: greet
      - action: utter_greet
  - rule: hand over
    steps:
      - intent: human_handoff
      - action: utter_handoff
"""
CREDENTIALS = """\
connectors.servicenow.ServiceNowInput:
  instance_url: ${{SERVICENOW_INSTANCE_URL}}
  api: connect
  username: rasa.integration
  password: ${{SERVICENOW_PASSWORD}}
  queue_id: {queue}
  callback_url: {callback}
  poll_interval: 0.2
"""


def clean_env(**extra: str) -> Dict[str, str]:
    """The environment of a user's shell: nothing pointing into this checkout or its .venv."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(RASA_TELEMETRY_ENABLED="false", TF_CPP_MIN_LOG_LEVEL="2", SQLALCHEMY_SILENCE_UBER_WARNING="1", **extra)
    return env


def run(command: List[str], cwd: Path, timeout: float, env: Dict[str, str] = None) -> str:
    done = subprocess.run(command, cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def declared_dependencies() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(r"^dependencies = \[(.*?)\]", text, re.S | re.M).group(1)


def wheelhouse_for(wheel: Path) -> Path:
    """Wheels of every dependency, kept between runs while constraints and dependencies stay the same."""
    key = hashlib.sha256(CONSTRAINTS.read_bytes() + declared_dependencies().encode()).hexdigest()[:12]
    wheelhouse = WHEELHOUSES / f"wheelhouse-{key}"
    if not (wheelhouse / ".complete").exists():
        wheelhouse.mkdir(parents=True, exist_ok=True)
        # pip wheel, not pip download: sdists are built once, here, where the index is at hand.
        run([sys.executable, "-m", "pip", "wheel", "-q", "-c", str(CONSTRAINTS), "-w", str(wheelhouse), RASA_36, str(wheel)],
            cwd=ROOT, timeout=1800)
        (wheelhouse / ".complete").touch()
    return wheelhouse


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        cwd=ROOT, timeout=300)
    (built,) = out.glob("rasa_servicenow_handoff-*.whl")
    return built


def test_the_wheel_holds_the_connector_and_the_emulator_and_nothing_of_the_demo(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    packages = {name.rsplit("/", 1)[0] for name in names if not name.startswith("rasa_servicenow_handoff-")}
    assert packages == {
        "connectors",
        "connectors/servicenow",
        "connectors/servicenow/backends",
        "connectors/servicenow/doctor",
        "connectors/servicenow/emulator",
        "connectors/servicenow/emulator/console",
        "connectors/servicenow/rasa_glue",
        "connectors/servicenow/store",
        "connectors/servicenow/webchat",
    }
    for needed in ("connectors/servicenow/webchat/index.html", "connectors/servicenow/emulator/__main__.py",
                   "connectors/servicenow/emulator/console/index.html", "connectors/servicenow/doctor/__main__.py"):
        assert needed in names
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("/METADATA"))).decode()
    # No Rasa of its own: the project's Rasa stays; an extra for each Rasa.
    requirements = re.findall(r"^Requires-Dist: (.*)$", metadata, re.M)
    assert not [r for r in requirements if re.match(r"rasa", r) and "extra ==" not in r], requirements
    assert re.search(r"^Requires-Dist: rasa ?<3\.7,>=3\.6 ?; extra == .rasa.$", metadata, re.M), metadata
    assert re.search(r"^Requires-Dist: rasa-pro ?<4,>=3\.18 ?; extra == .rasa-pro.$", metadata, re.M), metadata


def test_installed_into_a_fresh_project_it_hands_a_conversation_over(wheel, tmp_path):
    timings = {}
    started = time.monotonic()
    wheelhouse = wheelhouse_for(wheel)
    timings["wheelhouse"] = time.monotonic() - started

    mark = time.monotonic()
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, timeout=300)
    python, rasa = str(venv / "bin" / "python"), str(venv / "bin" / "rasa")
    # A Rasa 3.6 project first, then the connector into it.
    run([python, "-m", "pip", "install", "-q", "--no-compile", "--no-index", "--find-links", str(wheelhouse), "-c", str(CONSTRAINTS),
         RASA_36], cwd=tmp_path, timeout=1800)
    run([python, "-m", "pip", "install", "-q", "--no-compile", "--no-index", "--find-links", str(wheelhouse), "-c", str(CONSTRAINTS),
         str(wheel)], cwd=tmp_path, timeout=600)
    run([python, "-m", "pip", "check"], cwd=tmp_path, timeout=120)
    timings["install"] = time.monotonic() - mark

    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    where = run([python, "-c", "import connectors.servicenow as c; print(c.__file__)"], cwd=project, timeout=120)
    assert where.strip().startswith(str(venv)), where

    emulator = subprocess.Popen([python, "-m", "connectors.servicenow.emulator", "--port", "0", "--quiet"], cwd=project,
                                env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    callback = CallbackReceiver()
    server = None
    try:
        line = emulator.stdout.readline()
        assert "listening on" in line, line
        emulator_url = line.strip().rsplit(" ", 1)[-1]
        (project / "domain.yml").write_text(DOMAIN)
        (project / "config.yml").write_text(CONFIG)
        (project / "data" / "nlu.yml").write_text(NLU)
        (project / "data" / "rules.yml").write_text(RULES)
        (project / "credentials.yml").write_text(CREDENTIALS.format(queue=QUEUE_ID, callback=callback.url))
        env = clean_env(SERVICENOW_INSTANCE_URL=emulator_url, SERVICENOW_PASSWORD="secret")

        mark = time.monotonic()
        run([rasa, "train", "--fixed-model-name", "bot", "--out", "models"], cwd=project, timeout=900, env=env)
        timings["train"] = time.monotonic() - mark

        doctor = subprocess.run([python, "-m", "connectors.servicenow.doctor"], cwd=project, env=env,
                                capture_output=True, text=True, timeout=300)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        assert "Connect queue 'IT Support' (queue_id) exists" in doctor.stdout

        mark = time.monotonic()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(tmp_path / "rasa.log", "w")
        server = subprocess.Popen([rasa, "run", "--model", "models/bot.tar.gz", "--enable-api", "--credentials",
                                   "credentials.yml", "--interface", "127.0.0.1", "--port", str(port)],
                                  cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)

        def serving() -> bool:
            assert server.poll() is None, (tmp_path / "rasa.log").read_text()[-3000:]
            try:
                return requests.get(f"{url}/status", timeout=1).status_code == 200
            except (requests.ConnectionError, requests.Timeout):
                # Loading the model can hold the loop for over a second on a busy machine.
                return False

        wait_for(serving, timeout=600, interval=0.5, what="rasa run from the fresh environment")
        timings["rasa run start"] = time.monotonic() - mark
        handoff_through(url, emulator_url, callback)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
        emulator.terminate()
        emulator.wait(timeout=30)
        callback.stop()
    timings["total"] = time.monotonic() - started
    print("install test timings (s): " + ", ".join(f"{name} {seconds:.0f}" for name, seconds in timings.items()))


def handoff_through(url: str, emulator_url: str, callback: CallbackReceiver) -> None:
    def say(text: str) -> list:
        answer = requests.post(f"{url}/webhooks/servicenow/webhook", json={"sender": "ada", "message": text}, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def slots() -> dict:
        return requests.get(f"{url}/conversations/ada/tracker", timeout=30).json()["slots"]

    def agent(action: str, **body) -> dict:
        answer = requests.post(f"{emulator_url}/__emu/agent/{action}", json=body, timeout=10)
        answer.raise_for_status()
        return answer.json()

    assert say("hi")[0]["text"] == "Hello from the minimal bot."
    assert say("live agent")  # the channel's "connecting" notice
    chat = slots()["live_chat_id"]
    assert slots()["handoff_active"] is True and chat
    agent("accept", session=chat)
    agent("message", session=chat, text="Hi Ada, Beth here.")
    callback.wait_for_text("ada", lambda text: text == "Hi Ada, Beth here.", timeout=30)
    assert say("my laptop is on fire") == []  # to the agent, not to the bot
    transcript = requests.get(f"{emulator_url}/__emu/transcript/{chat}", timeout=10).json()["messages"]
    assert "my laptop is on fire" in [message["message"] for message in transcript]
    agent("close", session=chat)
    wait_for(lambda: slots()["handoff_active"] is False, timeout=30, what="the handoff to end")
    assert say("hi")[0]["text"] == "Hello from the minimal bot."
