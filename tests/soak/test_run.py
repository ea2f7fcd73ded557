"""What the soak run reads from the replicas' logs for the checker."""

from soak.run import traceback_blocks

LOG = """\
2026-12-07 17:16:01 INFO     connectors.servicenow.core.opening  - Handoff started for conversation va-0001.
2026-12-07 17:16:02 ERROR    sanic.error  - Exception occurred while handling uri: 'http://127.0.0.1:5005/webhooks/servicenow/stream'
Traceback (most recent call last):
  File "handler.py", line 10, in stream
    await write()
ConnectionError: Connection closed by server.

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "handler.py", line 12, in stream
    raise RuntimeError("unable to perform operation")
RuntimeError: unable to perform operation on <TCPTransport closed=True>; the handler is closed
[2026-12-07 17:16:03 +0000] [812] [ERROR] Exception in task
Traceback (most recent call last):
  File "x.py", line 1, in <module>
KeyError: 'sender'
"""


def test_each_traceback_is_one_block_with_the_line_logged_before_it_and_its_last_exception():
    blocks = traceback_blocks(LOG)
    assert blocks == [
        {
            "logged": "2026-12-07 17:16:02 ERROR    sanic.error  - Exception occurred while handling uri: "
            "'http://127.0.0.1:5005/webhooks/servicenow/stream'",
            "exception": "RuntimeError: unable to perform operation on <TCPTransport closed=True>; the handler is closed",
        },
        {"logged": "[2026-12-07 17:16:03 +0000] [812] [ERROR] Exception in task", "exception": "KeyError: 'sender'"},
    ]


def test_a_log_without_a_traceback_has_none():
    assert traceback_blocks("2026-12-07 17:16:01 WARNING  x  - Redis is not answering; retrying.\n") == []
