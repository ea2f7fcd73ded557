"""10. The channel on Rasa 3.6 and on Rasa Pro, side by side in one run.

``rasa run`` on Rasa Pro needs a licence, so both Rasas serve the channel the
same licence-free way: tests/pro/serve.py, a Sanic app whose routes come from
Rasa's own ``register()`` (sanic 21.12 under Rasa 3.6, sanic 25.12 under Rasa
Pro 3.21), run by Sanic's runner, in each Rasa's own virtualenv (.venv and
.venv-pro). Rasa 3.6 loads the demo model; Rasa Pro's agent is the demo
assistant of tests/assistant.py (Rasa Pro's Agent, stores and NLG with a
scripted dialogue). The two measures are the channel's own paths, which run
no model: forwarding a user's message to ServiceNow (server-side time, as in
scenario 2) and an agent's message reaching the user's callback (as in
scenario 3), per API."""

import os
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional

from bench.cluster import ROOT, Service, free_port, pinned, start_emulator, wait_until_up
from bench.fixtures import EMULATOR_CPU, RASA_CPU, Context, channel_for, emulator_config, start_chats
from bench.load import Stats, get_json, post_json
from bench.scenarios.agent_latency import measure
from bench.scenarios.handoff_messages import forward_times

#: (label, the virtualenv's python)
RASAS = (("rasa-3.6", ROOT / ".venv" / "bin" / "python"), ("rasa-pro", ROOT / ".venv-pro" / "bin" / "python"))
AGENT_CHATS = 20


async def run(ctx: Context) -> Dict[str, Any]:
    results: Dict[str, Any] = {}
    for label, python in RASAS:
        if not python.exists():
            results[label] = {"skipped": f"{python.parent.parent.name} is missing (make test makes it)"}
            continue
        results[label] = {}
        for backend in ("virtual_agent", "connect"):
            results[label][backend] = await _measure(ctx, label, python, backend)
    return results


async def _measure(ctx: Context, label: str, python: Path, backend: str) -> Dict[str, Any]:
    workdir = ctx.workdir / f"versions-{label}-{backend}"
    workdir.mkdir(parents=True, exist_ok=True)
    servicenow = start_emulator(workdir, EMULATOR_CPU, **emulator_config())
    server: Optional[Service] = None
    try:
        server = _serve(workdir, python, channel_for(backend, servicenow, ctx.receiver), ctx.model, name=f"{label}-{backend}")
        await wait_until_up(f"{server.url}/webhooks/servicenow/", server)
        version = await get_json(ctx.http, f"{server.url}/test/version")
        if backend == "virtual_agent":
            await post_json(ctx.http, f"{servicenow.url}/__emu/config", {"va_callback_url": f"{server.url}/webhooks/servicenow/callback"})
        senders = await start_chats(ctx, server.url, ctx.sizes.chats_small, f"ver-{label}-{backend}")
        forward, _client = await forward_times(ctx, backend, servicenow.url, server.url, senders, range(ctx.sizes.latency_requests))
        chats = [await _chat_of(ctx, server.url, sender) for sender in senders[:AGENT_CHATS]]
        for chat in chats:
            await post_json(ctx.http, f"{servicenow.url}/__emu/agent/accept", {"session": chat})
        deliveries = await measure(ctx, servicenow.url, chats, ctx.sizes.agent_messages, f"ver-{label}-{backend}")
        return {
            "rasa": version["rasa"],
            "python": version["python"],
            "forward_ms": Stats.of(forward).as_dict(),
            "agent_to_user_ms": Stats.of([delivery.latency_ms for delivery in deliveries]).as_dict(),
        }
    finally:
        if server is not None:
            server.stop()
        servicenow.stop()


def _serve(workdir: Path, python: Path, options: Dict[str, Any], model: Path, name: str) -> Service:
    import json

    port = free_port()
    log_path = workdir / f"{name}.log"
    command: List[str] = [str(python), "-m", "tests.pro.serve", "--port", str(port), "--options", json.dumps(options),
                          "--model", str(model)]
    env = {**os.environ, "RASA_TELEMETRY_ENABLED": "false", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "TF_CPP_MIN_LOG_LEVEL": "2", "SQLALCHEMY_SILENCE_UBER_WARNING": "1"}
    process = subprocess.Popen(pinned(command, RASA_CPU), cwd=ROOT, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env)
    return Service(name, f"http://127.0.0.1:{port}", process, log_path)


async def _chat_of(ctx: Context, url: str, sender: str) -> str:
    slots = await get_json(ctx.http, f"{url}/test/slots/{sender}")
    return slots["live_chat_id"]
