"""The command line: ``python -m connectors.servicenow.emulator`` as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from pathlib import Path
from typing import AsyncIterator, List

import aiohttp
import pytest

from connectors.servicenow.emulator import DEFAULT_QUEUE_SYS_ID
from tests import children

from .conftest import BASIC

REPO = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"^ServiceNow emulator listening on (http://127\.0\.0\.1:\d+)$")
# Importing the parent package pulls in Rasa, which is slow to import on a cold start.
STARTUP_DEADLINE_S = 120


async def spawn(*args: str) -> asyncio.subprocess.Process:
    return children.register(await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "connectors.servicenow.emulator",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    ))


async def listening_url(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), STARTUP_DEADLINE_S)
    found = LISTENING.match(line.decode().rstrip("\n"))
    assert found, f"unexpected first line {line!r}"
    return found.group(1)


@pytest.fixture
async def processes() -> AsyncIterator[List[asyncio.subprocess.Process]]:
    started: List[asyncio.subprocess.Process] = []
    yield started
    for process in started:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_cli_serves_on_a_free_port_and_stops_on_sigterm(processes, tmp_path):
    config_file = tmp_path / "emulator.json"
    config_file.write_text(json.dumps({"connect_page_size": 2, "greeting_text": None}))
    process = await spawn("--port", "0", "--config", str(config_file), "--set", "token_ttl_s=60", "--verbose")
    processes.append(process)
    url = await listening_url(process)

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/__emu/config") as response:
            config = await response.json()
        async with http.get(
            f"{url}/api/now/connect/support/queues", auth=BASIC, headers={"Accept": "application/json"}
        ) as response:
            assert response.status == 200
            assert (await response.json())["result"][0]["sys_id"] == DEFAULT_QUEUE_SYS_ID
    assert (config["connect_page_size"], config["greeting_text"], config["token_ttl_s"]) == (2, None, 60)

    process.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0
    log = stderr.decode()
    assert "GET /api/now/connect/support/queues -> 200 user=rasa.integration" in log
    assert "secret" not in log and BASIC.encode() not in log


async def test_cli_quiet_and_sigint(processes):
    process = await spawn("--port", "0", "--quiet")
    processes.append(process)
    url = await listening_url(process)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/__emu/sessions") as response:
            assert response.status == 200
    process.send_signal(signal.SIGINT)
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0
    assert "/__emu/sessions" not in stderr.decode()


async def test_cli_rejects_a_bad_override(processes):
    process = await spawn("--port", "0", "--set", "connect_page_size=0")
    processes.append(process)
    stdout, stderr = await asyncio.wait_for(process.communicate(), STARTUP_DEADLINE_S)
    assert process.returncode == 2
    assert stdout == b""
    assert "connect_page_size" in stderr.decode()


async def test_the_default_log_shows_the_chats_progress_not_their_polls(processes):
    """Issue 21 item 4: ``make run``'s terminal showed every Connect poll. At INFO now: a chat opened, the agent joined,
    the message count, the end; the polls, and any message text, only at DEBUG (``--verbose``) or not at all."""
    process = await spawn("--port", "0")
    processes.append(process)
    url = await listening_url(process)
    api = {"Accept": "application/json", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/now/connect/support/queues/{DEFAULT_QUEUE_SYS_ID}/sessions",
                             json={"message": "my password is hunter2"}, auth=BASIC, headers=api) as response:
            group = (await response.json())["result"]["group"]
        async with http.post(f"{url}/__emu/agent/accept", json={"session": group}) as response:
            assert response.status == 200
        for _ in range(5):
            async with http.get(f"{url}/api/now/connect/conversations/{group}/messages", auth=BASIC, headers=api) as response:
                assert response.status == 200
        async with http.post(f"{url}/__emu/agent/close", json={"session": group}) as response:
            assert response.status == 200
    process.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    lines = stderr.decode().splitlines()
    assert not [line for line in lines if "/messages" in line], "polls are DEBUG"
    assert "hunter2" not in stderr.decode()
    events = [line.split(": ", 1)[1] for line in lines if "emulator.connect:" in line]
    assert events == [
        f"Connect chat CHAT0010001 opened in IT Support (group {group})",
        "Connect chat CHAT0010001: Beth Anglin joined",
        "Connect chat CHAT0010001: agent message (2 messages)",
        "Connect chat CHAT0010001 closed: state 3 closed_complete (2 messages)",
        "Connect chat CHAT0010001: system message (3 messages)",
    ]
