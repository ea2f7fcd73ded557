"""The sinks that take from the outbox, each with its own delivered-up-to
pointer in the conversation's stream: the callback URL (``callback``),
Server-Sent Events streams (``sse``) and socket.io sessions (``socketio``)."""
