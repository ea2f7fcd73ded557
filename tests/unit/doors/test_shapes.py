"""What outbox items and bot replies are on a socket: the shapes Rasa's
``SocketIOOutput`` emits and rasa-webchat renders. rasa-webchat renders
bot_uttered text as Markdown and keeps every link scheme; what agents and
ServiceNow wrote, and values from outside filled into the channel's own
texts, must not become a link there."""

import pytest

from connectors.servicenow.doors.shapes import socketio_events, socketio_messages
from connectors.servicenow.outbox.base import HANDOFF_EVENT, TYPING_EVENT, OutboundItem


def test_text_is_split_at_blank_lines_as_rasa_does():
    assert socketio_messages({"text": "one\n\ntwo"}) == [{"text": "one"}, {"text": "two"}]


def test_choices_are_quick_replies_on_the_last_part():
    message = {"text": "Hi\n\nPick one", "buttons": [{"title": "Yes", "payload": "yes"}, {"title": "No", "payload": "no"}]}
    assert socketio_messages(message) == [
        {"text": "Hi"},
        {
            "text": "Pick one",
            "quick_replies": [
                {"content_type": "text", "title": "Yes", "payload": "yes"},
                {"content_type": "text", "title": "No", "payload": "no"},
            ],
        },
    ]


def test_an_image_is_an_image_attachment_after_its_text():
    assert socketio_messages({"text": "A photo", "image": "https://x/p.png"}) == [
        {"text": "A photo"},
        {"attachment": {"type": "image", "payload": {"src": "https://x/p.png"}}},
    ]
    assert socketio_messages({"text": "", "image": "https://x/p.png"}) == [
        {"attachment": {"type": "image", "payload": {"src": "https://x/p.png"}}}
    ]


def test_a_link_is_markdown_text_and_a_video_link_a_video():
    assert socketio_messages({"text": "The KB article", "attachment": "https://x/kb"}) == [
        {"text": "[The KB article](https://x/kb)"}
    ]
    assert socketio_messages({"text": "https://x/kb", "attachment": "https://x/kb"}) == [{"text": "https://x/kb"}]
    assert socketio_messages({"text": "How to", "attachment": "https://x/howto.mp4"}) == [
        {"text": "How to"},
        {"attachment": {"type": "video", "payload": {"src": "https://x/howto.mp4"}}},
    ]


def test_no_extra_keys_reach_the_widget():
    # rasa-webchat tells a text message by its keys: metadata and recipient_id stay out.
    message = {"recipient_id": "u1", "text": "Hi", "metadata": {"source": "agent"}}
    assert socketio_messages(message) == [{"text": "Hi"}]


def test_a_bots_custom_payload_is_emitted_as_rasa_does_and_servicenows_rich_items_as_their_text():
    assert socketio_messages({"custom": {"data": {"foo": 1}}}) == [{"foo": 1}]
    assert socketio_messages({"text": "Hi", "custom": {"data": {"foo": 1}}}) == [{"text": "Hi"}, {"foo": 1}]
    agent_html = {"text": "shown", "custom": {"html": "<b>shown</b>"}, "metadata": {"source": "agent"}}
    assert socketio_messages(agent_html) == [{"text": "shown"}]


def test_typing_and_status_are_events_of_their_own():
    typing = OutboundItem("1-0", TYPING_EVENT, {"recipient_id": "u1", "typing": True})
    status = OutboundItem("2-0", HANDOFF_EVENT, {"recipient_id": "u1", "handoff": {"active": False, "chat_id": "c"}})
    message = OutboundItem("3-0", "message", {"recipient_id": "u1", "text": "hi"})
    assert socketio_events(typing, "bot_uttered") == [("servicenow_typing", {"typing": True})]
    assert socketio_events(status, "bot_uttered") == [("servicenow_handoff", {"active": False, "chat_id": "c"})]
    assert socketio_events(message, "out") == [("out", {"text": "hi"})]


# -- Markdown: what may become a link -----------------------------------------------

# The security review's reproduction (issue 22): newlines in an OutputLink URL
# smuggled a Markdown reference definition with a javascript: target.
SMUGGLED = "https://example.com/\n\n[z]:javascript:alert%28document.domain%29\n[Click]\t[z]"


def agent(**fields):
    return {**fields, "metadata": {"source": "agent", "agent_name": "Mallory"}}


def test_agent_text_cannot_make_a_markdown_link_or_image():
    [message] = socketio_messages(agent(text="click [here](javascript:alert(1)) ![p](https://x.test/p.png) <javascript:alert(2)>"))
    assert message == {
        "text": "click \\[here\\]\\(javascript:alert\\(1\\)\\) \\!\\[p\\]\\(https://x.test/p.png\\) \\<javascript:alert\\(2\\)\\>"
    }


def test_agent_links_and_images_only_for_web_urls():
    assert socketio_messages(agent(text="evil", attachment="javascript:alert(1)")) == [{"text": "evil"}]
    assert socketio_messages(agent(text="pixel", image="javascript:alert(1)")) == [{"text": "pixel"}]
    assert socketio_messages(agent(text="kb [1]", attachment="https://example.com/a_(b)")) == [
        {"text": "[kb \\[1\\]](https://example.com/a_%28b%29)"}
    ]


@pytest.mark.parametrize(
    "url",
    [
        SMUGGLED,
        "https://example.com/ [x](javascript:alert(1))",
        "https://example.com/\u200b",
        "https://example.com/\u2028[z]:javascript:1",
        "https:\\\\evil.test/",
        "https:/relative",
        "javascript://example.com/%0Aalert(1)",
        "data:text/html,<script>alert(1)</script>",
        "//example.com/no-scheme",
    ],
)
def test_a_url_with_whitespace_controls_or_another_scheme_makes_no_link(url):
    shown = socketio_messages(agent(text="Click", attachment=url))
    assert shown == [{"text": "Click"}]
    assert socketio_messages(agent(text="", attachment=url))[0]["text"].count("](") == 0


def test_a_video_from_servicenow_needs_a_web_url():
    assert socketio_messages(agent(text="v", attachment="https://example.com/a.mp4")) == [
        {"text": "v"},
        {"attachment": {"type": "video", "payload": {"src": "https://example.com/a.mp4"}}},
    ]
    assert socketio_messages(agent(text="v", attachment="javascript:alert(1)//a.mp4")) == [{"text": "v"}]


def test_agent_attachment_objects_are_not_passed_to_the_widget():
    # rasa-webchat renders a "snippet" attachment as a link to whatever it names.
    snippet = {"type": "snippet", "payload": {"title": "x", "link": "javascript:alert(1)"}}
    assert socketio_messages(agent(text="hi", attachment=snippet)) == [{"text": "hi"}]


def test_the_bots_own_markdown_is_kept():
    bot = {"text": "see [the docs](https://example.com)", "metadata": {"source": "bot"}}
    assert socketio_messages(bot) == [{"text": "see [the docs](https://example.com)"}]
    assert socketio_messages({"text": "[a](https://b.test)"}) == [{"text": "[a](https://b.test)"}]


def test_a_channel_text_filled_from_outside_is_shown_as_written():
    # speech marks it markdown: false when a filled value could form a link.
    notice = {"text": "An agent will be with you in [z]: javascript:alert(1)", "metadata": {"source": "bot", "markdown": False}}
    assert socketio_messages(notice) == [{"text": "An agent will be with you in \\[z\\]: javascript:alert\\(1\\)"}]
