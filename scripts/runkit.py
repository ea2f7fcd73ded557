"""Small helpers for ``scripts/run.sh`` and ``scripts/run-replicas.sh``, in
Python because the virtual environment is the one thing both scripts can
count on (no curl, no setsid on every machine).

    python scripts/runkit.py token
    python scripts/runkit.py wait-http URL [URL ...] --pid PID [--pid PID ...] [--timeout S]
    python scripts/runkit.py own-group COMMAND [ARG ...]
    python scripts/runkit.py follow FILE --pid PID [--show REGEX] [--prefix TEXT]
    python scripts/runkit.py socketio-path credentials-socketio.yml
"""

import argparse
import os
import re
import secrets
import signal
import sys
import time
import urllib.error
import urllib.request
from typing import List, Optional, Sequence

POLL_S = 0.25
FOLLOW_POLL_S = 0.1


def token() -> str:
    """A token for Rasa's ``--auth-token``: 32 random bytes, URL-safe (it goes in ``?token=``)."""
    return secrets.token_urlsafe(32)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # an HTTP answer of any status: the server is up
    except (urllib.error.URLError, OSError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A child that exited but was not reaped yet is a zombie: gone for us.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def wait_http(urls: Sequence[str], pids: Sequence[int], timeout: float) -> int:
    """0 once every URL answers; 1 when a watched process is gone first; 2 on timeout."""
    deadline = time.monotonic() + timeout
    pending = list(urls)
    while pending:
        if any(not _alive(pid) for pid in pids):
            return 1
        if time.monotonic() > deadline:
            return 2
        if _answers(pending[0]):
            pending.pop(0)
            continue
        time.sleep(POLL_S)
    return 0


def own_group(command: List[str]) -> None:
    """Run COMMAND in a process group of its own, with SIGINT back to its default.

    The terminal's Ctrl-C then reaches the script only, which stops each
    process once, in order (Rasa before the emulator it may still call). A
    background job of a non-interactive shell starts with SIGINT ignored;
    a plain ``kill -INT`` should still stop it."""
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.execvp(command[0], command)


def follow(path: str, pid: int, show: str, prefix: str) -> int:
    """Print the lines of a log file that match SHOW as they are written, until
    the process PID that writes it is gone. The process writes to the file, not
    to a pipe: whatever happens to this viewer, its writes never fail."""
    pattern = re.compile(show)
    out = sys.stdout
    with open(path, errors="replace") as log:
        partial = ""
        while True:
            chunk = log.read()
            if chunk:
                lines = (partial + chunk).split("\n")
                partial = lines.pop()
                for line in lines:
                    if pattern.search(line):
                        out.write(f"{prefix}{line}\n")
                out.flush()
                continue
            if not _alive(pid):
                if partial and pattern.search(partial):
                    out.write(f"{prefix}{partial}\n")
                out.flush()
                return 0
            time.sleep(FOLLOW_POLL_S)


def socketio_path(credentials: str) -> str:
    import yaml

    with open(credentials) as handle:
        sections = yaml.safe_load(handle) or {}
    section = sections.get("connectors.servicenow.ServiceNowSocketIOInput") or {}
    return section.get("socketio_path") or "/socket.io"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("token", help="print a new token for rasa run --auth-token")
    wait = commands.add_parser("wait-http", help="wait until each URL answers over HTTP")
    wait.add_argument("urls", nargs="+")
    wait.add_argument("--pid", type=int, action="append", default=[], help="give up when this process is gone")
    wait.add_argument("--timeout", type=float, default=600.0)
    group = commands.add_parser("own-group", help="exec COMMAND in a new process group")
    group.add_argument("argv", nargs=argparse.REMAINDER)
    tail = commands.add_parser("follow", help="show the matching lines of a log file while PID runs")
    tail.add_argument("file")
    tail.add_argument("--pid", type=int, required=True)
    tail.add_argument("--show", default=".", help="a regular expression; lines that match are shown")
    tail.add_argument("--prefix", default="")
    path = commands.add_parser("socketio-path", help="the socket.io door's socketio_path in a credentials file")
    path.add_argument("credentials")
    args = parser.parse_args(argv)

    if args.command == "token":
        print(token())
        return 0
    if args.command == "wait-http":
        return wait_http(args.urls, args.pid, args.timeout)
    if args.command == "own-group":
        if not args.argv:
            parser.error("own-group needs a command")
        own_group(args.argv)
    if args.command == "follow":
        try:
            return follow(args.file, args.pid, args.show, args.prefix)
        except (BrokenPipeError, KeyboardInterrupt):
            return 0
    if args.command == "socketio-path":
        print(socketio_path(args.credentials))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
