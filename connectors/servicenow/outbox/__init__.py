"""Delivery to the user of everything said outside a request: one outbox,
kept in the store (``stream.Outbox``), and the sinks that take from it: the
callback URL, Server-Sent Events streams and socket.io sessions (``sinks``)."""
