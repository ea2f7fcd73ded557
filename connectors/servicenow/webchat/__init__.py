"""The reference chat page (``chat_page: true``): ``index.html``,
``webchat.css`` and ``webchat.js`` in this folder, and the headers they are
served with.

The page loads nothing but its own two files and talks only to its own
origin (the channel's webhook, typing and stream routes), so its Content
Security Policy allows exactly that; images may come from any http(s) host
(an agent's file is served by the ServiceNow instance). It may not be framed
(``frame-ancestors 'none'``, and ``X-Frame-Options`` for older browsers): a page
that puts a conversation in a frame could trick the user into clicking in it.
A team that embeds the page copies it and serves it with its own policy.
"""

from typing import Dict

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "connect-src 'self'",
    "img-src 'self' http: https:",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
))

#: Sent with every file of the page.
HEADERS: Dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # The page's address may carry ?sender=: links an agent sends are not told it.
    "Referrer-Policy": "no-referrer",
}
