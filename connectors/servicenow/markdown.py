"""Markdown built from validated parts, for frontends that render bot text as
Markdown (the stock rasa-webchat widget does, and keeps every link scheme).

Text that the channel did not write itself (an agent's message, a ServiceNow
notice, a value ServiceNow gave that fills one of the channel's texts) is
escaped so that no link, image, autolink or HTML can form from it; URLs are
accepted only as absolute http(s) URLs with no whitespace or control
characters, and the characters that end or break a Markdown link destination
are percent-encoded. The review that led here (issue 22): an ``OutputLink``
whose URL carried newlines smuggled a Markdown reference definition with a
``javascript:`` target past a check of the URL's prefix alone.
"""

import re
from typing import Optional

from connectors.servicenow.urls import is_web_url

# CommonMark lets a backslash escape any ASCII punctuation; these are the
# characters that start or close links, images, autolinks, HTML, entities,
# emphasis, code and tables. Escaping more than the link-forming ones keeps an
# agent's text shown exactly as written.
_SIGNIFICANT = re.compile(r"[\\`*_{}\[\]()<>#+!|~&]")
# What a link, an image, an autolink or raw HTML cannot form without.
_LINK_FORMING = re.compile(r"[\\\[\]<>]")
# Characters percent-encoded inside a link destination: each could end it,
# start a title, or be read as an escape. (An entity such as ``&#10;`` is
# decoded only after the link is parsed, and the scheme is checked already.)
_DESTINATION_UNSAFE = {
    "(": "%28",
    ")": "%29",
    "<": "%3C",
    ">": "%3E",
    "[": "%5B",
    "]": "%5D",
    "\\": "%5C",
    '"': "%22",
    "'": "%27",
    "`": "%60",
}


def escape_text(text: str) -> str:
    """``text`` as Markdown shows it literally: no link, image, autolink, raw
    HTML or entity can form. Line breaks are kept (paragraphs stay paragraphs)."""
    return _SIGNIFICANT.sub(r"\\\g<0>", text)


def is_inert(text: str) -> bool:
    """Whether ``text``, put anywhere into an author's Markdown, can form no
    link, image, autolink or HTML there, nor a line of its own."""
    return not _LINK_FORMING.search(text) and text.isprintable()


def web_url(value: object) -> Optional[str]:
    """``value`` as a link target safe to put in Markdown, or None when it is
    not a plain web URL (``urls.is_web_url``): the characters that matter to
    Markdown are percent-encoded."""
    if not is_web_url(value):
        return None
    assert isinstance(value, str)
    return "".join(_DESTINATION_UNSAFE.get(char, char) for char in value)


def link(label: str, url: str) -> str:
    """A Markdown link to ``url`` (already passed through ``web_url``) whose
    label is shown as written."""
    return f"[{escape_text(label)}]({url})"
