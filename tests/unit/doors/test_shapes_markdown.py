"""rasa-webchat renders bot_uttered text as Markdown and keeps every link
scheme; what agents and ServiceNow wrote, and values from outside filled into
the channel's own texts, must not become a link there."""

import pytest

from connectors.servicenow.socketio_channel import socketio_messages

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
