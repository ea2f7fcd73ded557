"""A local, in-memory ServiceNow for the demo and the tests.

The emulator is a small aiohttp server that answers like a ServiceNow instance for the parts the handoff connector
uses: the **Connect Support** REST API (``/api/now/connect/...``, polled), the **Virtual Agent Bot Integration API**
(``/api/sn_va_as_service/bot/integration`` in, callbacks out to the connector's webhook), the **OAuth** token endpoint
(``/oauth_token.do``) and ServiceNow's authentication and error conventions. A **control plane** under ``/__emu/``
lets a test, or a person with curl, play the human agent, move the clock, inject faults and see what the connector
sent and received; its **agent console** (``/__emu/console``) lets a person play the agent in a browser. It follows
section 5 of the ServiceNow reference (``servicenow-api.md``); where the reference marks a behaviour as inferred
([I]) the emulator makes that choice explicit in code comments and, where it matters, configurable. Of the Virtual
Agent API only the asynchronous mode is emulated (no ``va_mode: sync``).

Running it
----------
From a shell (``--port 0`` picks a free port)::

    python -m connectors.servicenow.emulator --host 127.0.0.1 --port 8181 \\
        [--config emulator.json] [--set key=value ...] [--control-token TOKEN] [--quiet | --verbose]

Once it listens it prints ``ServiceNow emulator listening on http://HOST:PORT`` (the first line, which scripts wait
for) and ``Agent console: http://HOST:PORT/__emu/console#token=TOKEN`` to stdout. On stderr it logs each chat's
progress at INFO (opened, agent joined, message counts, closed; never message text or credentials), every request at
DEBUG (``--verbose``), warnings only with ``--quiet``; it stops cleanly on SIGTERM or SIGINT. ``--set`` values are
JSON (``--set connect_page_size=5``, ``--set greeting_text=null``); text that is not JSON is taken as a string. The
control token is ``--control-token``, else ``$EMULATOR_CONTROL_TOKEN``, else new for each run.

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
``connect_queues``              ``{sys_id: {"name", "agents": [user_name], "question"?, "not_available"?,
                                "average_wait_time"?}}``; ``not_available`` true or a reason text makes session
                                creation answer 403 and shows in ``GET .../queues``; ``average_wait_time`` (seconds,
                                0) is the queue's and its entries' wait estimate; entries also carry ``position``
                                (1-based among waiting entries) and ``wait_time`` (seconds waited so far)
``connect_page_size``           messages per ``GET .../messages`` page (25)
``greeting_text``               posted by the agent on accept; ``null`` disables
``join_message``                also post "<Agent> has joined the support session" on accept (false)
``idle_timeout_s``              open sessions idle this long are abandoned, state 8 (3600; 0 disables)
``strict_headers``              400 without ``Accept: application/json`` / JSON ``Content-Type`` on /api (true)
``log_requests``                keep the request log of ``GET /__emu/requests`` (true)
``request_log_limit``           newest entries kept in that log (1000)
``random_seed``                 seed for fault ``probability`` draws (null: a random one, shown by ``GET /__emu/faults``)
``faults``                      fault rules in force from the start and after a reset ([]); set at runtime: replaced
``control_plane_loopback_only`` refuse ``/__emu/`` calls from non-loopback addresses (true; start-up only)
``control_plane_hosts``         host names, besides loopback names and IP literals, the control plane answers to ([];
                                start-up only)
``control_plane_require_token`` every control-plane call needs the token, not only browsers' (false; start-up only)
``table_read_access``           tables the integration user may read over the Table API (all five); others 403
``table_invalid_query_returns_no_rows``  an invalid query part returns no rows instead of being ignored (false)
``va_callback_url``             the connector's webhook for VA callbacks, may carry ``?secret=`` (null: callbacks are
                                only logged, outcome ``not_configured``)
``va_callback_auth``            ``"none"``, ``"basic:user:pass"``, ``"bearer:<token>"`` or ``{header: value}`` (at
                                most 10): what every callback carries ("none")
``va_callback_timeout_ms``      per-attempt callback timeout (5000, ServiceNow's default)
``va_callback_retries``         extra attempts after a failed or timed-out callback, same payload (0)
``va_callback_retry_delay_ms``  wait before each retry (1000)
``va_static_token``             require this static token on VA calls: header ``token``, else body ``token`` (null)
``va_hash_secret``              require ``x-b2b-signature`` = hex HMAC-SHA1 of the compact JSON body (null)
``va_silent_token_failure``     a bad token/signature answers ``200 {"status":"success"}`` and is then ignored, as
                                the real worker thread does, instead of 401 (false)
``va_batching``                 ``"separate"``: one callback per body item; ``"batched"``: one per event
``va_validation``               ``"strict"`` (reference 5.4) or ``"lenient"`` (``userId`` and ``message.text``)
``va_escalation_texts``         user texts that escalate like ``action: "AGENT"``, case-insensitive
                                (``["agent", "live agent", "Live Agent Support."]``)
``va_wait_time``                ``waitTime`` of the wait-time spinner when a chat is queued ("8 Seconds"; null: none)
``va_long_action_names``        ``StartTypingIndicatorActionMsg``/``EndTypingIndicatorActionMsg`` instead of the short
                                typing names (false)
``close_style``                 VA agent close: ``"switch"`` (System + SwitchToVirtualAgent, back to state VA) or
                                ``"completed"`` (the same with ``completed: true``, state CLOSED)
``va_provider_applications``   ``{inbound_id: name}``: the ``sys_cs_provider_application`` records that
                                ``GET /api/now/table/sys_cs_provider_application`` lists ({}; inbound calls accept any id)
``attachment_types``           MIME types the instance takes (``image/*`` allowed; images, PDF, text, CSV, Word, Excel)
``max_attachment_bytes``        largest attachment in bytes (10 MB)
==============================  =====================================================================================

``greeting_text`` and ``idle_timeout_s`` apply to VA sessions too; ``basic_users`` and ``oauth_clients`` guard the
VA route like every ``/api`` route; the default agent of a VA chat is the first agent of the first Connect queue.

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

Attachments (files.py): ``POST /api/now/attachment/file?table_name=&table_sys_id=&file_name=`` with the file as the
body (any ``Content-Type``) answers ``201`` with the ``sys_attachment`` record (400: type not in ``attachment_types``,
over ``max_attachment_bytes``, a parameter missing; a Connect conversation needs its requester or agent); the bytes
are served at ``GET /api/now/attachment/{sys_id}/file`` and, without a login, ``GET /sys_attachment.do?sys_id=``.
A Connect message's ``attachments`` are sys_ids of uploads, shown as their records. A VA ``message.attachment``
(``{url, contentType, fileName}`` or a list) with a bad shape is a 400; one of a type not taken is dropped silently
(transcript event ``ATTACHMENT_DROPPED``).

Queue entry ``state``: 1 waiting, 2 work in progress, 3 closed complete, 4 escalated, 7 closed by client,
8 abandoned. An agent's close posts the system message "<Agent> has left the support session" when the agent closes
first and "<Agent> has closed the support session" when the requester had already left (KB0598883). Errors use
ServiceNow's ``{"error": {"message", "detail"}, "status": "failure"}``, except Connect's 403 ``{"result": "<reason>"}``
(closed session, not a member of the conversation, queue not available).

Virtual Agent API (reference 5.4)
---------------------------------
``POST /api/sn_va_as_service/bot/integration`` needs Basic or Bearer auth and JSON ``Accept``/``Content-Type`` like
every ``/api`` route, plus ``va_static_token``/``va_hash_secret`` when set (401
``{"status": "failure", "error": {"message", "detail"}}``). Strict validation (400, same envelope): ``userId``
required; ``message.typed`` required when ``message`` is present; ``message.text`` required unless there is a
``message.attachment`` or ``action`` is one of END_CONVERSATION, TYPING, VIEWING, SEND_HISTORY, SET_USER_TIMEZONE,
START_CONVERSATION, START_CREATED_CONVERSATION, FAULT_CONVERSATION, UPDATE_MESSAGES (whose ``message`` is
``{id, status}`` or a list of them); END_CONVERSATION with a non-empty text and unknown actions are rejected. A valid
call answers ``200 {"status": "success"}`` at once; its callbacks follow.

A conversation is keyed by ``(appInboundId or "default", userId, clientSessionId)``. Every callback is
``{"requestId", "clientSessionId", "nowSessionId": "", "message", "userId", "clientVariables", "interactionId",
"body": [...], ["agentChat": true], ["completed": true], ["takeControl": true], "score": 1}``: the latest
``requestId`` and ``clientVariables`` of the conversation, the triggering ``message`` (agent-side events: the latest
user message), the interaction sys_id. Body items (``OutputText`` always has ``group: "DefaultText"``,
``maskType: "NONE"`` and a fresh 32-hex ``messageId``; agent texts add ``agentInfo {sentFromAgent, agentName,
agentAvatar, agentId}``)::

    state   event                           body items, in order                                   flags
    VA      text / START_CONVERSATION       OutputText "Hi, I'm your Virtual Agent. ..."           -
            (none while silentMessage)
    VA      AGENT or an escalation text     OutputText "Please stand by while I connect you to a   agentChat
            -> QUEUED                       live agent.", ActionMsg StartSpinner {spinnerType:
                                            "wait_time", message: "Routing you to a live agent...",
                                            waitTime: "8 Seconds"}, ActionMsg SubscribeToSupportQueue
    QUEUED  agent/accept -> LIVE            ActionMsg EndSpinner {spinnerType: "wait_time"},          agentChat
                                            SubscribeToChatPresence, SwitchToLiveAgent, System
                                            "<Agent> has entered the chat.", OutputText greeting
                                            (greeting_text) with agentInfo
    LIVE    agent/message                   OutputText <text> with agentInfo                       agentChat
    LIVE    agent/typing on / off           ActionMsg StartTypingIndicator / EndTypingIndicator    agentChat
    LIVE    agent/transfer                  System "<A> has left the chat.", System "<B> has       agentChat
                                            entered the chat." (later texts carry B's agentInfo)
    LIVE    agent/close -> VA               System "<Agent> has closed the support session.",      agentChat
            (close_style completed: CLOSED) ActionMsg SwitchToVirtualAgent                         (+completed)
    QUEUED  va/no_agents -> CLOSED          OutputText "There are no agents available to chat      takeControl
                                            right now. Please try again later."
    any     END_CONVERSATION -> CLOSED      OutputText "The conversation has ended. If you need    completed
                                            help again, type hi."
    open    timeout / idle -> CLOSED        System "The conversation with a live agent has timed   takeControl
                                            out."                                                  (+agentChat if
                                                                                                   queued/live)
    any     FAULT_CONVERSATION -> CLOSED    (empty body), score 0                                  takeControl
    QUEUED, user text, a second AGENT       none (the text goes to the transcript)
    LIVE
    any     TYPING, VIEWING, UPDATE_MESSAGES, none (recorded in the transcript's events)
            SEND_HISTORY, SET_USER_TIMEZONE,
            SWITCH

With ``va_batching: "separate"`` each item is its own callback: ``agentChat`` is on all of them, ``completed`` and
``takeControl`` only on the event's last one. A message to a CLOSED conversation starts a new one (state VA, new
``interactionId``). Queued or live VA chats idle for ``idle_timeout_s`` time out as above, checked lazily on each
request (conversations in state VA are not timed out by idleness).

Callbacks are POSTed to ``va_callback_url`` with ``Content-Type: application/json``, ``User-Agent: ServiceNow`` and
the ``va_callback_auth`` headers, by a background task, one at a time per conversation in creation order. A non-2xx
answer, a timeout (``va_callback_timeout_ms``; the connector may still have got it) or a connection error is retried
``va_callback_retries`` times after ``va_callback_retry_delay_ms`` with the same bytes, before the next callback of
that conversation goes out.

Control plane (JSON bodies; ``session`` is a Connect ``group`` or a VA ``clientSessionId``)
-----------------------------------------------------------------------------------------
A VA session can also be named by its ``interactionId`` (needed when several users share a ``clientSessionId``).
Every call must come from loopback, name this emulator in ``Host`` (an IP literal, ``localhost`` or a name of
``control_plane_hosts``), carry no foreign ``Origin`` and send JSON (415 otherwise); browsers (requests with
``Origin`` or ``Sec-Fetch-*``) also need the control token in ``X-Emulator-Token``, except for the console page and
an address the user typed. See middleware.control_guard and docs/emulator.md, "Control-plane security".

``POST /__emu/reset``
    Forget sessions, tokens, faults, callbacks (queued ones are cancelled), the request and callback logs and clock
    changes; restore the config the app started with.
``GET /__emu/config``, ``POST /__emu/config``
    Read the config, or patch top-level keys at runtime: ``{"connect_page_size": 2, "greeting_text": null}``. The
    start-up-only keys answer 403 when a patch would change them.
``GET /__emu/sessions``
    Every session of both APIs, oldest first. Connect: ``api: "connect"``, numeric ``state``, queue, requester,
    agent, message count. VA: ``api: "va"``, ``state`` ``"VA"|"QUEUED"|"LIVE"|"CLOSED"``, ``clientSessionId``,
    ``userId``, ``appInboundId``, ``interactionId``, agent, ``requestId``, message and callback counts. Both have
    ``"open"``: a live-agent chat is waiting or in progress (Connect state 1 or 2, VA QUEUED or LIVE).
``POST /__emu/agent/accept`` ``{"session"?, "agent"?: {"name", "user_name", "id"}}``
    Connect: state 2, ``assigned_to``, optional join message, greeting. VA: QUEUED to LIVE. Defaults: the oldest
    waiting session of either API, the queue's first agent.
``POST /__emu/agent/message`` ``{"session"?, "text", "work_note"?: false, "system"?: false, "attachment"?}``
    A message from the agent (``reflected_field`` ``work_notes`` for a work note; VA: transcript only), or a system
    message (VA: an ActionMsg System callback, in any state). ``attachment`` ``{"name", "content_type",
    "data_base64" | "url"}`` sends a file (``text`` optional): Connect, a message with the file's record in
    ``attachments``; VA, an ``OutputImage`` (images) or ``OutputLink`` item with ``agentInfo``.
``POST /__emu/agent/typing`` ``{"session"?, "on"?: true}``
    VA: a Start/EndTypingIndicator callback, answers ``{"supported": true, ...}``. Connect has no typing over REST:
    changes nothing and answers ``{"supported": false}``.
``POST /__emu/agent/transfer`` ``{"session"?, "to": {"user_name", "name"?, "id"?}, "message"?: true}``
    Connect: new ``assigned_to``, ``transfer_state`` "accepted", "<A> has left ..." and "<B> has joined ..."
    messages. VA: the two System callbacks (none with ``"message": false``), then B's ``agentInfo``.
``POST /__emu/agent/close`` ``{"session"?, "who"?: "agent"|"requester", "order"?, "message"?: true}``
    Connect, ``who="agent"``: state 3 and the KB0598883 text; ``order`` is ``"agent_first"`` ("has left") or
    ``"after_requester_left"`` ("has closed"), by default whichever matches whether the requester already left.
    ``"message": false`` closes silently (state only). ``who="requester"``: the requester leaves (state 7).
    VA, ``who="agent"``: System "... has closed the support session." and SwitchToVirtualAgent per ``close_style``
    (``"message": false`` leaves out the System text); ``who="requester"``: as an inbound END_CONVERSATION.
``POST /__emu/timeout`` ``{"session"?}``
    Connect: abandon the session now (state 8). VA: the timeout callback, CLOSED.
``POST /__emu/va/no_agents`` ``{"session"?}``
    A queued VA chat finds no agent (default: the oldest queued one): the no-agents callback, CLOSED.
``GET /__emu/transcript/{session}``
    The session summary and all its messages, oldest first, work notes and system messages included. VA messages
    have the Connect message keys (``sys_id``, ``message``, ``created_by`` = the ``userId`` / the agent's user name /
    ``"system"``, ``sender_name``, ``timestamp``, ``reflected_field`` ...; an agent message's ``sys_id`` is its
    callback ``messageId``) plus ``delivery_status`` (from UPDATE_MESSAGES). A VA transcript also has ``events``
    (every inbound ``action`` with ``timestamp``, ``requestId`` and the ``state`` then; UPDATE_MESSAGES with
    ``messages: [{id, status}]``, END/FAULT_CONVERSATION with ``cause``), ``history``, ``context_variables``,
    ``client_variables`` and ``requests`` (the accepted inbound bodies, ``token`` redacted).
``GET /__emu/inbox``
    The chats as the agent console lists them (read-only; see "Agent console" below).
``GET /__emu/requests``
    The inbound /api and OAuth requests (method, path, query, headers, body, user, status, fault, dropped),
    credentials (including the VA ``token``) redacted.
``GET /__emu/callbacks[?session=<clientSessionId>]``
    ``{"callbacks": [...], "pending": N}``: one entry per callback attempt, oldest first, with ``callback_id`` (shared
    by the retries of one callback), ``session``, ``url``, ``headers`` sent (auth reduced to its kind:
    ``Basic [redacted]``), ``payload``, ``attempt`` (1, 2, ...), ``duplicate``, ``outcome`` (``delivered``,
    ``failed`` non-2xx, ``timeout``, ``error``, ``fault``, ``dropped``, ``not_configured``), ``status``,
    ``latency_ms``, ``fault`` (rule id), ``error``, ``at_ms``. ``pending`` counts callbacks not finished yet. Capped
    at ``request_log_limit`` entries.
``POST /__emu/oauth/expire`` ``{"token"?: "*"|<token>, "refresh_tokens"?: false}``
    Expire access tokens (all, or one access or refresh token) so the next call gets 401.
``GET /__emu/clock``, ``POST /__emu/clock`` ``{"now_ms"?: N|null, "advance_ms"?: N}``
    ``now_ms`` freezes the clock (several messages then share a timestamp), ``null`` returns to real time,
    ``advance_ms`` moves it (tokens expire, idle sessions time out).
``GET /__emu/faults``, ``POST /__emu/faults`` (one rule or a list, appended), ``DELETE /__emu/faults``
    List (with ``seed``, the draws' seed), add or clear fault rules (below).

Without ``session``, ``agent/message``, ``agent/typing``, ``agent/transfer`` and ``timeout`` act on the most
recently accepted live session and ``agent/close`` on the most recently accepted one not yet closed by the agent (of
either API), so a demo can be driven with short curl calls::

    curl -s --json '{}' localhost:8181/__emu/agent/accept
    curl -s --json '{"text": "Hi, I am Beth"}' localhost:8181/__emu/agent/message
    curl -s --json '{}' localhost:8181/__emu/agent/close

Agent operations answer ``{"session": <summary>, "messages": [<messages posted by this call>]}``, for a VA session
plus ``"callbacks": [<payloads created>]``; errors are ``{"error": "<text>"}`` with 400, 404 (no such session) or 409
(wrong state for the operation, or a ``clientSessionId`` several VA sessions share).

Agent console
-------------
Open ``http://127.0.0.1:8181/__emu/console`` in a browser to play the human agent (Beth Anglin, the default agent)
instead of using curl. The left column lists the chats, grouped Waiting, Live and (collapsed) Closed, each with the
requester, the API (Connect or Virtual Agent), how long it has waited or since it last changed, the last message and
a dot when the user wrote since the agent last looked. The right side shows the selected chat's transcript (user,
agent and system messages, work notes marked internal; for a Virtual Agent chat also the history sent with the
handoff and "User is typing..." after a TYPING), with Accept for a waiting chat, and for a live one a reply box
(Enter sends, Shift+Enter is a new line), Send, a work-note switch (Connect) and Close chat. While the agent types in
a Virtual Agent chat the console sends ``agent/typing`` on and, after 2 s without a key, off.

The page is static HTML, CSS and JavaScript from ``console/`` (served under ``/__emu/console/...``; no build step,
nothing loaded from outside the emulator). It polls ``GET /__emu/inbox`` and the selected chat's
``GET /__emu/transcript/{session}`` every 700 ms and acts through ``POST /__emu/agent/accept|message|typing|close``,
so it answers loopback clients only, like the rest of the control plane. Its calls carry the control token, which the
page takes from its address (``#token=``) or, when the user typed the address, from the page itself. Users are
named as the channel named them (``user_label``, see agent_console.user_of), else ``Conversation <id>``.

``GET /__emu/inbox`` answers ``{"now_ms", "agent": {"user_name", "name"}, "chats": [...]}``: each chat is the
``/__emu/sessions`` summary plus ``id`` (stable), ``ref`` (the ``session`` to name it by in control-plane calls),
``status`` (``waiting``, ``live`` or ``closed``), ``requester_name``, ``user_label``, ``user_named``,
``conversation_id``, ``started_ms`` (Connect: created; VA: entered
the queue), ``updated_ms`` (last message or state change), ``last_message`` (``{"author": "user"|"agent"|"system"|
"note", "text", "sender_name", "timestamp"}`` or null) and ``user_messages``; in queue order. Virtual Agent
conversations that never asked for a live agent are left out.

Hooks for browser tests (stable): ``data-testid="chat-item"`` with ``data-session`` (the ``session`` of
``/__emu/sessions``) and ``data-state`` (``waiting|live|closed``) on each chat in the list; ``accept``, ``close``,
``reply-input``, ``send`` and ``work-note`` on the controls; ``transcript`` on the transcript and ``message`` with
``data-author`` (``user|agent|system|note``) on each of its entries, whose text content is the message text alone;
also ``unread``, ``typing``, ``history`` (entries ``history-message``), ``empty-list``, ``no-selection``,
``agent-name``, ``conversation-title``, ``conversation-status``, ``error`` and ``connection``.

Fault rules
-----------
::

    {"match": {"api": "connect|va|oauth|table|attachment|callback", "method": "POST",
               "path_regex": "/messages$", "session": "<group>|<clientSessionId>|*",
               "body_regex": "..."},
     "respond": {"status": 429, "headers": {"Retry-After": "2"}, "body": null,
                 "delay_ms": 0, "drop_connection": false, "duplicate": false, "hold": false},
     "times": 1, "probability": 1.0}

Every ``match`` field is optional; ``body_regex`` is searched in the request body (or the callback JSON). A matching
rule answers before authentication and before the route runs, so the request has no effect on the emulator's state.
``body: null`` gives the built-in body for the status (401 the auth envelope, Connect 403 ``{"result"}``, 404 "No
Record found", 429 the rate-limit envelope with ``Retry-After`` and ``X-RateLimit-Limit/Reset/Rule``, others the
error envelope). Without ``status`` the rule only delays the request.
``drop_connection`` closes the TCP connection without any response. ``times: null`` never runs out. A rule
``{"per_user_per_hour": N, "scope": "connect"|"va"|"all"}`` turns on ServiceNow-style rate limiting instead:
``X-RateLimit-*`` on every counted response and 429 beyond N requests per user per clock hour.

``"api": "callback"`` rules act on the outbound VA callbacks instead (``session`` is the ``clientSessionId``,
``path_regex`` applies to the webhook URL's path, ``body_regex`` to the payload JSON), on each attempt: ``status``
fails the attempt without sending it (logged as ``fault``, retried like any failure), ``drop_connection`` loses it
(``dropped``), ``duplicate: true`` sends it twice, and ``delay_ms`` holds it back; on a first attempt without holding
up the conversation's later callbacks, which therefore overtake it. ``hold: true`` keeps the push until the
conversation's next push has gone out (or ``delay_ms``, 10 s by default), so the two swap places. A rule without
``api`` never matches a callback. Shorthand for pushes: ``{"push": "drop" | "fail" | "duplicate" | "hold" | "delay",
"session"?, "times"?, "probability"?, "delay_ms"?, "status"?}``. A rule's ``probability`` draws are seeded by
``random_seed`` (or the seed ``GET /__emu/faults`` shows) and by the rule's place, so a replay repeats them.

Table API (table.py, records.py)
--------------------------------
``GET /api/now/table/{sys_cs_conversation|interaction|sys_cs_message|sys_user|sys_cs_provider_application}[/{sys_id}]``
with ServiceNow's ``sysparm_query`` (``^``, ``^OR``, ``^NQ``, ``=``, ``!=``, ``>``, ``>=``, ``<``, ``<=``, ``LIKE``,
``STARTSWITH``, ``ENDSWITH``, ``IN``, ``ISEMPTY``, ``ORDERBY``, ``ORDERBYDESC``), ``sysparm_fields``,
``sysparm_limit``, ``sysparm_offset``, ``sysparm_display_value``, ``sysparm_exclude_reference_link``. Every Virtual
Agent message (both ways) is a ``sys_cs_message`` with a per-conversation ``sequence``, made before its push leaves,
whose ``sys_id`` is the push item's ``messageId``; ``interaction`` (sys_id = ``interactionId``) maps
``client_session_id`` to the ``sys_cs_conversation`` and records how the conversation ended. See docs/emulator.md.
"""

from .app import RunningEmulator, create_app, start_emulator
from .middleware import TOKEN_HEADER
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
    "TOKEN_HEADER",
    "create_app",
    "start_emulator",
]
