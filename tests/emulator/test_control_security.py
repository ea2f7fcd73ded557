"""The control plane's own protections (issue 22 item 6): JSON only, this emulator's Host and Origin only, the control
token for browsers, protections fixed at start; uploaded files served as sandboxed downloads. Each test replays one
attack of the security review and fails without its fix."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import sys
from typing import Dict

import aiohttp
import pytest

from connectors.servicenow.emulator import TOKEN_HEADER, EmulatorConfig, start_emulator
from tests import children

from .conftest import BASIC, EmulatorClient
from .test_cli import REPO

ATTACKER = "http://attacker.example"
#: What a same-origin fetch() from the console sends besides Origin (Fetch Metadata).
SAME_ORIGIN_FETCH = {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"}
TYPED_ADDRESS = {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>fetch("/__emu/config")</script></svg>'


async def config_of(client: EmulatorClient) -> Dict:
    return await client.ok("GET", "config")


async def test_a_cross_site_text_plain_post_cannot_change_the_config(client):
    """The review's attack: a page elsewhere POSTs text/plain (no preflight) to set va_callback_url to itself."""
    body = json.dumps({"va_callback_url": "http://attacker.example/steal"})
    forged = await client.request(
        "POST", "/__emu/config", data=body, headers={"Content-Type": "text/plain", "Origin": ATTACKER}
    )
    assert forged.status == 403 and "cross-site" in forged.body["error"]
    # Without an Origin (an old browser, a form in a sandbox) the form type alone is refused.
    plain = await client.request("POST", "/__emu/config", data=body, headers={"Content-Type": "text/plain"})
    assert plain.status == 415
    for form_type in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        assert (await client.request("POST", "/__emu/config", data=body, headers={"Content-Type": form_type})).status == 415
    assert (await config_of(client))["va_callback_url"] is None


async def test_a_foreign_host_cannot_read_the_secrets(client):
    """DNS rebinding: attacker.example resolves to 127.0.0.1; the browser sends its name as Host."""
    for host in ("attacker.example:8181", "attacker.example", "127.0.0.1.nip.io"):
        reply = await client.request("GET", "/__emu/config", headers={"Host": host})
        assert reply.status == 403, host
        assert "secret" not in json.dumps(reply.body)
    for host in ("localhost", f"localhost:{client.emulator.port}", "127.0.0.1:1", "[::1]:8181", "emu.localhost"):
        assert (await client.request("GET", "/__emu/config", headers={"Host": host})).status == 200, host


async def test_configured_host_names_are_answered():
    async with await start_emulator(EmulatorConfig(control_plane_hosts=["servicenow-emulator"])) as emulator:
        async with aiohttp.ClientSession() as http:
            client = EmulatorClient(http, emulator)
            ok = await client.request("GET", "/__emu/sessions", headers={"Host": "servicenow-emulator:8181"})
            other = await client.request("GET", "/__emu/sessions", headers={"Host": "other:8181"})
            assert (ok.status, other.status) == (200, 403)


async def test_no_request_can_turn_the_protections_off(client):
    for change in (
        {"control_plane_loopback_only": False},
        {"control_plane_hosts": ["attacker.example"]},
        {"control_plane_require_token": True, "connect_page_size": 3},
    ):
        reply = await client.control("POST", "config", change)
        assert reply.status == 403 and "start-up" in reply.body["error"], change
    config = await config_of(client)
    assert config["control_plane_loopback_only"] is True and config["control_plane_hosts"] == []
    assert config["connect_page_size"] == 25  # nothing of a refused patch applies
    # Posting back the same values (a whole GET /__emu/config) is not a change.
    assert (await client.control("POST", "config", {**config, "connect_page_size": 4})).status == 200


async def test_browsers_need_the_token_and_curl_does_not(client):
    token = client.emulator.control_token
    own = {"Origin": client.url, **SAME_ORIGIN_FETCH}
    refused = await client.request("GET", "/__emu/config", headers=own)
    assert refused.status == 403 and TOKEN_HEADER in refused.body["error"]
    # Fetch Metadata alone (a same-origin GET sends no Origin) is enough to be a browser.
    assert (await client.request("GET", "/__emu/config", headers=SAME_ORIGIN_FETCH)).status == 403
    accepted = await client.request("GET", "/__emu/config", headers={**own, TOKEN_HEADER: token})
    assert accepted.status == 200
    post = await client.request("POST", "/__emu/agent/typing", json={"on": True}, headers={**own, TOKEN_HEADER: token})
    assert post.status == 200
    wrong = await client.request("GET", "/__emu/sessions", headers={TOKEN_HEADER: "guess"})
    assert wrong.status == 403
    # A non-browser client on loopback: JSON, no Origin, no token.
    assert (await client.request("POST", "/__emu/agent/typing", json={"on": True})).status == 200
    # The address typed in the address bar (only the user can make a browser say Sec-Fetch-Site: none).
    assert (await client.request("GET", "/__emu/sessions", headers=TYPED_ADDRESS)).status == 200


async def test_cors_preflights_are_never_granted(client):
    async with client.http.options(
        client.url + "/__emu/config",
        headers={"Origin": ATTACKER, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"},
    ) as response:
        assert response.status in (403, 405)
        assert "Access-Control-Allow-Origin" not in response.headers


async def test_the_console_page_carries_the_token_only_for_an_address_the_user_typed(client):
    token = client.emulator.control_token
    pattern = re.compile(r'<meta name="emulator-control-token" content="([^"]*)">')
    typed = await client.request("GET", "/__emu/console", headers=TYPED_ADDRESS)
    assert typed.status == 200 and pattern.search(typed.body).group(1) == token
    assert typed.headers["Cache-Control"] == "no-store"
    for headers in (
        {},  # curl
        SAME_ORIGIN_FETCH,  # a script of this origin reading the page
        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"},  # a link or frame
        {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"},
    ):
        page = await client.request("GET", "/__emu/console", headers=headers)
        assert page.status == 200 and pattern.search(page.body).group(1) == "", headers
    assert token not in (await client.request("GET", "/__emu/console/console.js", headers=SAME_ORIGIN_FETCH)).body


async def test_require_token_makes_every_client_show_it():
    async with await start_emulator(EmulatorConfig(control_plane_require_token=True), control_token="t0ken") as emulator:
        async with aiohttp.ClientSession() as http:
            client = EmulatorClient(http, emulator)
            assert emulator.control_token == "t0ken"
            assert (await client.request("GET", "/__emu/sessions")).status == 403
            assert (await client.request("GET", "/__emu/sessions", headers={TOKEN_HEADER: "t0ken"})).status == 200
            assert (await client.request("GET", "/__emu/console")).status == 200


async def test_uploaded_files_are_sandboxed_downloads(client, live):
    """An SVG with script, uploaded as an attachment, must not run on the emulator's origin."""
    upload = await client.request(
        "POST",
        f"/api/now/attachment/file?table_name=live_group_profile&table_sys_id={live['group']}&file_name=x.svg",
        data=SVG,
        auth=BASIC,
        headers={"Content-Type": "image/svg+xml", "Accept": "application/json"},
    )
    assert upload.status == 201, upload.body
    sys_id = upload.body["result"]["sys_id"]
    for path in (f"/api/now/attachment/{sys_id}/file", f"/sys_attachment.do?sys_id={sys_id}"):
        async with client.http.get(client.url + path, auth=BASIC) as response:
            assert response.status == 200 and await response.read() == SVG
            assert response.headers["Content-Disposition"].startswith("attachment;")
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["Content-Security-Policy"] == "sandbox; default-src 'none'"


async def test_agent_files_are_served_the_same_way(client, live):
    data = base64.b64encode(SVG).decode()
    reply = await client.ok("POST", "agent/message", {
        "session": live["group"], "attachment": {"name": 'evil".svg', "content_type": "image/svg+xml", "data_base64": data}})
    link = reply["messages"][0]["attachments"][0]["download_link"]
    async with client.http.get(link) as response:
        disposition = response.headers["Content-Disposition"]
        assert disposition.startswith('attachment; filename="evil_.svg"') and "evil%22.svg" in disposition


@pytest.mark.parametrize("from_env", [False, True])
async def test_the_cli_takes_a_token_and_prints_the_console_link(from_env, tmp_path):
    args = [sys.executable, "-m", "connectors.servicenow.emulator", "--port", "0", "--quiet"]
    env = None
    if from_env:
        import os

        env = {**os.environ, "EMULATOR_CONTROL_TOKEN": "from-env"}
    else:
        args += ["--control-token", "from-flag"]
    process = children.register(await asyncio.create_subprocess_exec(
        *args, cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL))
    try:
        assert process.stdout is not None
        first = (await asyncio.wait_for(process.stdout.readline(), 120)).decode().strip()
        second = (await asyncio.wait_for(process.stdout.readline(), 10)).decode().strip()
        url = first.rsplit(" ", 1)[-1]
        token = "from-env" if from_env else "from-flag"
        assert second == f"Agent console: {url}/__emu/console#token={token}"
        async with aiohttp.ClientSession() as http:
            headers = {"Origin": url, **SAME_ORIGIN_FETCH}
            async with http.get(f"{url}/__emu/sessions", headers={**headers, TOKEN_HEADER: token}) as response:
                assert response.status == 200
            async with http.get(f"{url}/__emu/sessions", headers=headers) as response:
                assert response.status == 403
    finally:
        process.terminate()
        await process.wait()
