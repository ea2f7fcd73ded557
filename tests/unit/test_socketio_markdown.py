"""rasa-webchat renders bot_uttered text as Markdown and keeps every link
scheme; what agents and ServiceNow wrote must not become a link there."""

from connectors.servicenow.socketio_channel import socketio_messages


def agent(**fields):
    return {**fields, "metadata": {"source": "agent", "agent_name": "Mallory"}}


def test_agent_text_cannot_make_a_markdown_link_or_image():
    [message] = socketio_messages(agent(text="click [here](javascript:alert(1)) ![p](https://x.test/p.png) <javascript:alert(2)>"))
    assert message == {"text": "click \\[here\\](javascript:alert(1)) !\\[p\\](https://x.test/p.png) \\<javascript:alert(2)\\>"}


def test_agent_links_and_images_only_for_web_urls():
    assert socketio_messages(agent(text="evil", attachment="javascript:alert(1)")) == [{"text": "evil"}]
    assert socketio_messages(agent(text="pixel", image="javascript:alert(1)")) == [{"text": "pixel"}]
    assert socketio_messages(agent(text="kb [1]", attachment="https://example.com/a (b)")) == [
        {"text": "[kb \\[1\\]](https://example.com/a%20%28b%29)"}
    ]


def test_the_bots_own_markdown_is_kept():
    bot = {"text": "see [the docs](https://example.com)", "metadata": {"source": "bot"}}
    assert socketio_messages(bot) == [{"text": "see [the docs](https://example.com)"}]
    assert socketio_messages({"text": "[a](https://b.test)"}) == [{"text": "[a](https://b.test)"}]
