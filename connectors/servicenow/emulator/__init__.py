"""A local, in-memory ServiceNow for the demo and the tests.

The emulator is a small aiohttp server that answers like a ServiceNow instance for the parts the handoff connector
uses: the **Connect Support** REST API (``/api/now/connect/...``), the **OAuth** token endpoint
(``/oauth_token.do``) and ServiceNow's authentication and error conventions. A **control plane** under ``/__emu/``
lets a test, or a person with curl, play the human agent, move the clock, inject faults and see what the connector
sent. It follows section 5 of the ServiceNow reference (``servicenow-api.md``); Connect Support is deprecated and its
REST API undocumented, so where the reference marks a behaviour as inferred ([I]) the emulator makes that choice
explicit in code comments and, where it matters, configurable. The Virtual Agent API is not emulated yet.

Running it
----------
From a shell (``--port 0`` picks a free port)::

    python -m connectors.servicenow.emulator --host 127.0.0.1 --port 8181 \\
        [--config emulator.json] [--set key=value ...] [--quiet]

It prints exactly one line to stdout once it listens, ``ServiceNow emulator listening on http://HOST:PORT``, logs
one line per request to stderr (never credentials; ``--quiet`` turns that off) and stops cleanly on SIGTERM or
SIGINT. ``--set`` values are JSON (``--set connect_page_size=5``, ``--set greeting_text=null``); text that is not
JSON is taken as a string.

From Python, inside a running event loop::

    from connectors.servicenow.emulator import EmulatorConfig, start_emulator

    emulator = await start_emulator(EmulatorConfig(connect_page_size=5), host="127.0.0.1", port=0)
    ...  # talk to emulator.url
    await emulator.close()          # or: async with await start_emulator() as emulator: ...

``create_app(config)`` returns the bare ``aiohttp.web.Application`` instead. Each app has its own state, so several
emulators can run in one process.

Accounts and defaults
---------------------
* Basic auth: user ``rasa.integration``, password ``secret``. This user is the Connect requester, so it is the
  ``created_by`` of the messages the connector posts.
* OAuth client ``rasa-connector`` / ``rasa-connector-secret`` with the ``password``, ``client_credentials`` and
  ``refresh_token`` grants; its client-credentials tokens act as ``rasa.integration``. Tokens live 1799 s.
* One queue, "IT Support", sys_id :data:`DEFAULT_QUEUE_SYS_ID` (``3f5a6a4c9b1e4d2f8c7e6b5a4d3c2b1a``), agent
  ``beth.anglin`` (shown as "Beth Anglin").

Configuration keys (:class:`EmulatorConfig`)
--------------------------------------------
==============================  =====================================================================================
``basic_users``                 ``{user: password}``; also the accounts the OAuth password grant accepts
``oauth_clients``               ``{client_id: {"secret", "grants": [...], "user"}}``; ``user`` for client_credentials
``token_ttl_s``                 access-token lifetime (1799)
``connect_queues``              ``{sys_id: {"name", "agents": [user_name], "question"?, "not_available"?}}``;
                                ``not_available`` true or a reason text makes session creation answer 403
``connect_page_size``           messages per ``GET .../messages`` page (25)
``greeting_text``               posted by the agent on accept; ``null`` disables
``join_message``                also post "<Agent> has joined the support session" on accept (false)
``idle_timeout_s``              open sessions idle this long are abandoned, state 8 (3600; 0 disables)
``strict_headers``              400 without ``Accept: application/json`` / JSON ``Content-Type`` on /api (true)
``log_requests``                keep the request log of ``GET /__emu/requests`` (true)
``request_log_limit``           newest entries kept in that log (1000)
``random_seed``                 seed for fault ``probability`` draws (null: random)
``control_plane_loopback_only`` refuse ``/__emu/`` calls from non-loopback addresses (true)
==============================  =====================================================================================

Connect Support routes (all need Basic or Bearer auth, all answer ``{"result": ...}``)
-------------------------------------------------------------------------------------
* ``GET  /api/now/connect/support/queues``
* ``POST /api/now/connect/support/queues/{queue}/sessions`` ``{"message"}``: a waiting chat; ``result.group`` is the
  conversation id
* ``GET  /api/now/connect/support/queues/{queue}/sessions``: ``[{"queueEntry": ...}]`` with ``position``
* ``GET  /api/now/connect/support/sessions?group_id=&queue_id=&closed=true|false``
* ``POST /api/now/connect/conversations/{group}/messages`` ``{"message", "reflected_field"?, "attachments"?}``
* ``GET  /api/now/connect/conversations/{group}/messages[?before=<ms>]``: newest first, one page
* ``POST /api/now/connect/support/sessions/{group}/leave``: the requester leaves, state 7 (idempotent)
* ``POST /api/now/connect/support/sessions/{group}/close`` ``{"agent_leave"?}``: state 3
* ``POST /api/now/connect/support/queues/{queue}/accept``: the calling agent takes the oldest waiting chat

Queue entry ``state``: 1 waiting, 2 work in progress, 3 closed complete, 4 escalated, 7 closed by client,
8 abandoned. An agent's close posts the system message "<Agent> has left the support session" when the agent closes
first and "<Agent> has closed the support session" when the requester had already left (KB0598883). Errors use
ServiceNow's ``{"error": {"message", "detail"}, "status": "failure"}``, except Connect's 403 ``{"result": "<reason>"}``
(closed session, not a member of the conversation, queue not available).

Control plane (no auth; JSON bodies; ``session`` is the Connect ``group``)
--------------------------------------------------------------------------
``POST /__emu/reset``
    Forget sessions, tokens, faults, the request log and clock changes; restore the config the app started with.
``GET /__emu/config``, ``POST /__emu/config``
    Read the config, or patch top-level keys at runtime: ``{"connect_page_size": 2, "greeting_text": null}``.
``GET /__emu/sessions``
    Every session: state, queue, requester, agent, message count.
``POST /__emu/agent/accept`` ``{"session"?, "agent"?: {"name", "user_name", "id"}}``
    State 2, ``assigned_to``, optional join message, greeting. Defaults: the oldest waiting session, the queue's
    first agent.
``POST /__emu/agent/message`` ``{"session"?, "text", "work_note"?: false, "system"?: false}``
    A message from the agent (``reflected_field`` ``work_notes`` for a work note), or a system message.
``POST /__emu/agent/typing`` ``{"session"?, "on"}``
    Connect has no typing over REST: changes nothing and answers ``{"supported": false}``.
``POST /__emu/agent/transfer`` ``{"session"?, "to": {"user_name", "name"?, "id"?}, "message"?: true}``
    New ``assigned_to``, ``transfer_state`` "accepted", "<A> has left ..." and "<B> has joined ..." messages.
``POST /__emu/agent/close`` ``{"session"?, "who"?: "agent"|"requester", "order"?, "message"?: true}``
    ``who="agent"``: state 3 and the KB0598883 text; ``order`` is ``"agent_first"`` ("has left") or
    ``"after_requester_left"`` ("has closed"), by default whichever matches whether the requester already left.
    ``"message": false`` closes silently (state only). ``who="requester"``: the requester leaves (state 7).
``POST /__emu/timeout`` ``{"session"?}``
    Abandon the session now (state 8).
``GET /__emu/transcript/{session}``
    The session summary and all its messages, oldest first, work notes included.
``GET /__emu/requests``
    The inbound /api and OAuth requests (method, path, query, headers, body, user, status, fault, dropped),
    credentials redacted.
``POST /__emu/oauth/expire`` ``{"token"?: "*"|<token>, "refresh_tokens"?: false}``
    Expire access tokens (all, or one access or refresh token) so the next call gets 401.
``GET /__emu/clock``, ``POST /__emu/clock`` ``{"now_ms"?: N|null, "advance_ms"?: N}``
    ``now_ms`` freezes the clock (several messages then share a timestamp), ``null`` returns to real time,
    ``advance_ms`` moves it (tokens expire, idle sessions time out).
``GET /__emu/faults``, ``POST /__emu/faults`` (one rule or a list, appended), ``DELETE /__emu/faults``
    List, add or clear fault rules (below).

Without ``session``, ``agent/message``, ``agent/typing``, ``agent/transfer`` and ``timeout`` act on the most
recently accepted live session and ``agent/close`` on the most recently accepted one not yet closed by the agent, so
a demo can be driven with short curl calls::

    curl -s -XPOST localhost:8181/__emu/agent/accept
    curl -s -XPOST localhost:8181/__emu/agent/message -d '{"text": "Hi, I am Beth"}'
    curl -s -XPOST localhost:8181/__emu/agent/close

Agent operations answer ``{"session": <summary>, "messages": [<messages posted by this call>]}``; errors are
``{"error": "<text>"}`` with 400, 404 (no such session) or 409 (wrong state for the operation).

Fault rules
-----------
::

    {"match": {"api": "connect|va|oauth|callback", "method": "POST",
               "path_regex": "/messages$", "session": "<group>|*"},
     "respond": {"status": 429, "headers": {"Retry-After": "2"}, "body": null,
                 "delay_ms": 0, "drop_connection": false},
     "times": 1, "probability": 1.0}

Every ``match`` field is optional. A matching rule answers before authentication and before the route runs, so the
request has no effect on the emulator's state. ``body: null`` gives the built-in body for the status (401 the auth
envelope, Connect 403 ``{"result"}``, 404 "No Record found", 429 the rate-limit envelope with ``Retry-After`` and
``X-RateLimit-Limit/Reset/Rule``, others the error envelope). Without ``status`` the rule only delays the request.
``drop_connection`` closes the TCP connection without any response. ``times: null`` never runs out. A rule
``{"per_user_per_hour": N, "scope": "connect"|"va"|"all"}`` turns on ServiceNow-style rate limiting instead:
``X-RateLimit-*`` on every counted response and 429 beyond N requests per user per clock hour.
"""

from .app import RunningEmulator, create_app, start_emulator
from .config import (
    DEFAULT_AGENT,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_GREETING,
    DEFAULT_PASSWORD,
    DEFAULT_QUEUE_SYS_ID,
    DEFAULT_USER,
    EmulatorConfig,
)

__all__ = [
    "DEFAULT_AGENT",
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_GREETING",
    "DEFAULT_PASSWORD",
    "DEFAULT_QUEUE_SYS_ID",
    "DEFAULT_USER",
    "EmulatorConfig",
    "RunningEmulator",
    "create_app",
    "start_emulator",
]
