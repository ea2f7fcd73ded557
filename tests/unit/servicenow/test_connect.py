"""The Connect Support client against a mocked instance (aioresponses)."""

import json
import re

import aiohttp
import pytest
from aioresponses import aioresponses

from connectors.servicenow.servicenow.base import AgentJoined, AgentMessage, ChatClosed, CloseReason, HandoffRequest, SystemNotice
from connectors.servicenow.servicenow.connect import ConnectBackend
from connectors.servicenow.servicenow.http import ServiceNowHTTP
from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.errors import ServiceNowRejected
from connectors.servicenow.core.chat import LiveChat

BASE = "https://acme.service-now.com"
GROUP = "g" * 32
MESSAGES = re.compile(rf"^{BASE}/api/now/connect/conversations/{GROUP}/messages(\?.*)?$")


async def no_sleep(_delay):
    return None


@pytest.fixture
async def backend():
    settings = ServiceNowSettings.from_credentials(
        {"instance_url": BASE, "username": "rasa.integration", "password": "pw", "queue_id": "q1"}
    )
    http = ServiceNowHTTP(settings, sleep=no_sleep)
    yield ConnectBackend(settings, http)
    await http.aclose()


def message(sys_id, ts, text="hello", author="beth.anglin", name="Beth Anglin", field="comments"):
    return {
        "sys_id": sys_id, "id": sys_id, "group": GROUP, "message": text, "formatted_message": text,
        "created_by": author, "sender_name": name, "timestamp": ts, "reflected_field": field,
    }


def chat(**fields):
    return LiveChat(sender_id="u1", chat_id=GROUP, user="rasa.integration", **fields)


async def test_open_chat_posts_the_request_to_the_queue(backend):
    with aioresponses() as mock:
        url = f"{BASE}/api/now/connect/support/queues/q1/sessions"
        mock.post(url, payload={"result": {"group": GROUP, "state": 1}})
        opened = await backend.open_chat(HandoffRequest(sender_id="u1", text="my laptop is broken"))
        body = json.loads(mock.requests[("POST", aiohttp.client.URL(url))][0].kwargs["data"])
    assert body == {"message": "my laptop is broken"}
    assert opened.chat_id == GROUP and opened.user == "rasa.integration"


async def test_open_chat_without_group_is_rejected(backend):
    with aioresponses() as mock:
        mock.post(f"{BASE}/api/now/connect/support/queues/q1/sessions", payload={"result": {}})
        with pytest.raises(ServiceNowRejected):
            await backend.open_chat(HandoffRequest(sender_id="u1", text="help"))


async def test_first_poll_reads_the_whole_thread_and_filters_own_messages_and_work_notes(backend):
    thread = [
        message("m4", 4000, "I'll check", field="work_notes"),
        message("m3", 3000, "Hi, I'm Beth"),
        message("m2", 2000, "Beth Anglin has joined the support session", author="system", name="system"),
        message("m1", 1000, "talk to live agent", author="rasa.integration", name="Rasa"),
    ]
    with aioresponses() as mock:
        mock.get(MESSAGES, payload={"result": thread})
        result = await backend.poll(chat().ref, chat().cursor)
    assert result.requests == 1  # a short page is the whole thread
    assert result.events == [
        AgentJoined("Beth Anglin"),  # the arrival, for the stream's status item (issue 21)
        SystemNotice("m2", "Beth Anglin has joined the support session", 2000),
        AgentMessage("m3", "Hi, I'm Beth", "Beth Anglin", 3000),
    ]
    assert result.last_updated == 4000
    assert set(result.seen_ids) == {"m1", "m2", "m3", "m4"}


async def test_messages_sharing_a_timestamp_are_each_delivered_once_in_order(backend):
    state = chat(last_updated=5000, seen_ids=("m1",))
    page = [message("b", 6000, "second"), message("a", 6000, "first"), message("m1", 5000, "old")]
    with aioresponses() as mock:
        mock.get(MESSAGES, payload={"result": page})
        first = await backend.poll(state.ref, state.cursor)
    assert [event.text for event in first.events] == ["first", "second"]

    state.last_updated, state.seen_ids = first.last_updated, tuple(first.seen_ids)
    page = [message("c", 6000, "third")] + page  # a third one in the same millisecond, committed later
    with aioresponses() as mock:
        mock.get(MESSAGES, payload={"result": page})
        second = await backend.poll(state.ref, state.cursor)
    assert [event.text for event in second.events] == ["third"]


async def test_a_late_commit_with_an_older_timestamp_is_still_delivered(backend):
    state = chat(last_updated=10_000, seen_ids=("x",))
    page = [message("x", 10_000, "newest"), message("late", 9_500, "late one")]
    with aioresponses() as mock:
        mock.get(MESSAGES, payload={"result": page})
        result = await backend.poll(state.ref, state.cursor)
    assert [event.text for event in result.events] == ["late one"]


async def test_a_backlog_larger_than_a_page_is_paged_back_to_the_cursor(backend):
    state = chat(last_updated=1000, seen_ids=("old",))
    newest_page = [message(f"n{i}", 1000 + i, f"msg {i}") for i in range(30, 5, -1)]  # 25 newest
    older_page = [message("n6", 1006, "msg 6")] + [message(f"n{i}", 1000 + i, f"msg {i}") for i in range(5, 0, -1)] + [
        message("old", 1000, "already seen")
    ]
    with aioresponses() as mock:
        mock.get(MESSAGES, payload={"result": newest_page})
        mock.get(MESSAGES, payload={"result": older_page})
        result = await backend.poll(state.ref, state.cursor)
        requests = mock.requests[("GET", aiohttp.client.URL(f"{BASE}/api/now/connect/conversations/{GROUP}/messages"))]
        second = mock.requests[("GET", aiohttp.client.URL(f"{BASE}/api/now/connect/conversations/{GROUP}/messages?before=1007"))]
    assert len(requests) == 1 and len(second) == 1
    assert [event.text for event in result.events] == [f"msg {i}" for i in range(1, 31)]
    assert result.requests == 2


async def test_a_quiet_chat_costs_one_request_per_poll(backend):
    state = chat(last_updated=1000, seen_ids=("m1",))
    with aioresponses() as mock:
        mock.get(MESSAGES, payload={"result": [message("m1", 1000, "request", author="rasa.integration")]})
        result = await backend.poll(state.ref, state.cursor)
    assert result.events == [] and result.requests == 1


SESSIONS_QUERY = re.compile(rf"^{BASE}/api/now/connect/support/sessions\?group_id={GROUP}$")


@pytest.mark.parametrize(
    "text",
    ["Beth Anglin has left the support session", "Beth Anglin has closed the support session"],
)
async def test_system_end_messages_close_the_chat_and_nothing_after_them_is_delivered(backend, text):
    state = chat(last_updated=1000, seen_ids=("start",))
    page = [
        message("after", 3000, "ghost"),
        message("end", 2000, text, author="system", name="system"),
        message("bye", 1500, "Bye!"),
        message("start", 1000, "help", author="rasa.integration"),
    ]
    with aioresponses() as mock:
        mock.get(MESSAGES, payload={"result": page})
        mock.get(SESSIONS_QUERY, payload={"result": [{"group": GROUP, "state": 3, "transfer_state": ""}]})
        result = await backend.poll(state.ref, state.cursor)
    assert result.events == [
        AgentMessage("bye", "Bye!", "Beth Anglin", 1500),
        ChatClosed(CloseReason.AGENT_CLOSED, text, "end", 2000),
    ]


async def test_a_transfer_announced_in_one_batch_is_not_an_end(backend):
    state = chat(last_updated=1000, seen_ids=("start",))
    page = [
        message("hi", 2200, "Hi, Fred here", author="fred.luddy", name="Fred Luddy"),
        message("joined", 2100, "Fred Luddy has joined the support session", author="system", name="system"),
        message("left", 2000, "Beth Anglin has left the support session", author="system", name="system"),
        message("start", 1000, "help", author="rasa.integration"),
    ]
    with aioresponses() as mock:
        mock.get(MESSAGES, payload={"result": page})
        result = await backend.poll(state.ref, state.cursor)
    assert [type(event).__name__ for event in result.events] == ["SystemNotice", "AgentJoined", "SystemNotice", "AgentMessage"]


async def test_a_lone_left_text_during_a_transfer_is_confirmed_with_the_session_state(backend):
    state = chat(last_updated=1000, seen_ids=("start",))
    page = [
        message("left", 2000, "Beth Anglin has left the support session", author="system", name="system"),
        message("start", 1000, "help", author="rasa.integration"),
    ]
    with aioresponses() as mock:
        mock.get(MESSAGES, payload={"result": page})
        mock.get(SESSIONS_QUERY, payload={"result": [{"group": GROUP, "state": 2, "transfer_state": "pending"}]})
        result = await backend.poll(state.ref, state.cursor)
    assert result.events == [SystemNotice("left", "Beth Anglin has left the support session", 2000)]


@pytest.mark.parametrize("state, reason", [(3, CloseReason.AGENT_CLOSED), ("4", CloseReason.ESCALATED), (8, CloseReason.ABANDONED)])
async def test_session_state_shows_a_closed_chat(backend, state, reason):
    with aioresponses() as mock:
        mock.get(re.compile(rf"^{BASE}/api/now/connect/support/sessions\?group_id={GROUP}$"), payload={"result": [{"group": GROUP, "state": state}]})
        assert await backend.check_closed(chat().ref) == ChatClosed(reason)


async def test_open_session_is_not_closed(backend):
    with aioresponses() as mock:
        mock.get(re.compile(rf"^{BASE}/api/now/connect/support/sessions\?"), payload={"result": [{"group": GROUP, "state": 2}]})
        assert await backend.check_closed(chat().ref) is None


async def test_an_unreadable_thread_of_a_closed_session_is_an_end_not_a_fault(backend):
    with aioresponses() as mock:
        mock.get(MESSAGES, status=403, payload={"result": "restricted"})
        mock.get(re.compile(rf"^{BASE}/api/now/connect/support/sessions\?"), payload={"result": [{"group": GROUP, "state": 3}]})
        result = await backend.poll(chat().ref, chat().cursor)
    assert result.events == [ChatClosed(CloseReason.AGENT_CLOSED)]


async def test_an_unreadable_thread_of_an_open_session_is_a_fault(backend):
    with aioresponses() as mock:
        mock.get(MESSAGES, status=403, payload={"result": "restricted"})
        mock.get(re.compile(rf"^{BASE}/api/now/connect/support/sessions\?"), payload={"result": [{"group": GROUP, "state": 2}]})
        with pytest.raises(ServiceNowRejected):
            await backend.poll(chat().ref, chat().cursor)


async def test_send_and_leave_use_the_conversation(backend):
    with aioresponses() as mock:
        send_url = f"{BASE}/api/now/connect/conversations/{GROUP}/messages"
        leave_url = f"{BASE}/api/now/connect/support/sessions/{GROUP}/leave"
        mock.post(send_url, payload={"result": message("s1", 7000, "thanks", author="rasa.integration")})
        mock.post(leave_url, payload={"result": {"group": GROUP, "state": 7}})
        sent = await backend.send(chat().ref, "thanks")
        await backend.leave(chat().ref)
        assert json.loads(mock.requests[("POST", aiohttp.client.URL(send_url))][0].kwargs["data"]) == {"message": "thanks"}
        assert ("POST", aiohttp.client.URL(leave_url)) in mock.requests
    assert (sent.message_id, sent.timestamp) == ("s1", 7000)


async def test_client_credentials_learn_the_integration_user_from_the_thread():
    settings = ServiceNowSettings.from_credentials(
        {"instance_url": BASE, "client_id": "c", "client_secret": "s", "queue_id": "q1"}
    )
    http = ServiceNowHTTP(settings, sleep=no_sleep)
    try:
        with aioresponses() as mock:
            mock.post(f"{BASE}/oauth_token.do", payload={"access_token": "t", "expires_in": 1799})
            mock.post(f"{BASE}/api/now/connect/support/queues/q1/sessions", payload={"result": {"group": GROUP}})
            mock.get(MESSAGES, payload={"result": [message("m1", 1, "help", author="svc.bot")]})
            opened = await ConnectBackend(settings, http).open_chat(HandoffRequest(sender_id="u1", text="help"))
    finally:
        await http.aclose()
    assert opened.user == "svc.bot"


def test_mention_and_link_markup_become_plain_text():
    from connectors.servicenow.servicenow.connect import _plain_text

    formatted = {"message": "", "formatted_message": "@M[abc|Beth] see @L[https://kb/1|KB1]"}
    assert _plain_text(formatted) == "Beth see KB1 (https://kb/1)"


async def test_a_first_poll_that_finds_a_full_page_reads_older_pages(backend):
    newest = [message(f"n{i}", 1000 + i, f"msg {i}") for i in range(40, 15, -1)]  # 25: a full page
    older = [message(f"n{i}", 1000 + i, f"msg {i}") for i in range(16, 0, -1)]
    with aioresponses() as mock:
        mock.get(MESSAGES, payload={"result": newest})
        mock.get(MESSAGES, payload={"result": older})
        result = await backend.poll(chat().ref, chat().cursor)
    assert [event.text for event in result.events] == [f"msg {i}" for i in range(1, 41)]
    assert result.requests == 2


# -- chat ids from the tracker store are checked before they go into a URL -------

from connectors.servicenow.errors import UnsafeChatId  # noqa: E402


@pytest.mark.parametrize("chat_id", ["../../table/sys_user", "g/../x", "g?sysparm_query=x", "g#x", "g%2F..", "", "g" * 129, "g\n"])
async def test_a_malformed_chat_id_from_the_tracker_is_never_put_into_a_url(backend, chat_id):
    crafted = LiveChat(sender_id="u1", chat_id=chat_id, user="rasa.integration")
    with aioresponses() as mock:
        for call in (backend.send(crafted.ref, "hi"), backend.leave(crafted.ref), backend.poll(crafted.ref, crafted.cursor), backend.check_closed(crafted.ref)):
            with pytest.raises(UnsafeChatId):
                await call
        assert not mock.requests


async def test_a_malformed_group_from_servicenow_is_refused_at_the_start(backend):
    with aioresponses() as mock:
        mock.post(f"{BASE}/api/now/connect/support/queues/q1/sessions", payload={"result": {"group": "../x"}})
        with pytest.raises(ServiceNowRejected):
            await backend.open_chat(HandoffRequest(sender_id="u1", text="help"))


async def test_a_queue_id_is_quoted_into_its_path(backend):
    with aioresponses() as mock:
        url = f"{BASE}/api/now/connect/support/queues/a%2Fb/sessions"
        mock.post(url, payload={"result": {"group": GROUP}})
        await backend.open_chat(HandoffRequest(sender_id="u1", text="help", queue_id="a/b"))
        assert mock.requests


@pytest.mark.parametrize(
    "flag, reason",
    [(False, None), (True, "not available"), ("false", None), ("true", "not available"), ("Closed for the holidays", "Closed for the holidays")],
)
async def test_the_queue_says_whether_anyone_is_available(backend, flag, reason):
    queues = [
        {"sys_id": "other", "not_available": True},
        {"sys_id": "q1", "name": "IT Support", "not_available": flag},
    ]
    with aioresponses() as mock:
        mock.get(f"{BASE}/api/now/connect/support/queues", payload={"result": queues})
        assert await backend.unavailable_reason(None) == reason


async def test_an_unknown_queue_is_not_reported_unavailable(backend):
    with aioresponses() as mock:
        mock.get(f"{BASE}/api/now/connect/support/queues", payload={"result": [{"sys_id": "other", "not_available": True}]})
        assert await backend.unavailable_reason("q9") is None


async def test_the_queue_status_of_a_waiting_chat(backend):
    sessions = re.compile(rf"^{BASE}/api/now/connect/support/sessions\?.*$")
    entry = {"group": GROUP, "state": 1, "position": 3, "wait_time": "42", "average_wait_time": "120"}
    with aioresponses() as mock:
        mock.get(sessions, payload={"result": [entry]})
        status = await backend.queue_status(chat().ref)
        assert (status.waiting, status.position, status.wait_time) == (True, 3, "120")
        mock.get(sessions, payload={"result": [{**entry, "state": 2, "position": 0}]})
        assert (await backend.queue_status(chat().ref)).waiting is False
        mock.get(sessions, payload={"result": [{**entry, "position": 0, "average_wait_time": "0"}]})
        status = await backend.queue_status(chat().ref)
        assert (status.waiting, status.position, status.wait_time) == (True, None, "0")
