"""``python -m soak.lock_race``: Rasa's ``RedisLockStore`` is not safe across replicas (finding 6 of the soak,
docs/reliability.md). Two stores on one Redis, one conversation: B issues its ticket (read, add, write) while A
cleans up after its turn; B's write puts A's finished ticket back, and B waits for it until it expires (60 s).
Needs ``redis-server``; starts a throwaway one on a free port. The connector's ``AtomicRedisLockStore``
(connectors/servicenow/rasa_glue/lock_store.py) has no such window; tests/store/test_lock_store.py puts the same
step inside each class's ticket issue and clean-up."""

import shutil
import socket
import subprocess
import sys
import tempfile
import time

from rasa.core.lock_store import RedisLockStore


def main() -> int:
    server = shutil.which("redis-server")
    if server is None:
        print("redis-server is needed", file=sys.stderr)
        return 2
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    folder = tempfile.mkdtemp()
    process = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", folder],
                               stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # waiting for redis-server to listen
        a, b = RedisLockStore(port=port), RedisLockStore(port=port)
        conversation = "user-1"
        first = a.issue_ticket(conversation, 60)       # replica A: a turn holds the lock
        stale = b.get_or_create_lock(conversation)     # replica B reads the lock to issue its ticket ...
        a.cleanup(conversation, first)                 # ... A finishes: removes its ticket, deletes the lock
        second = stale.issue_ticket(60)                # ... B writes back its stale copy, A's ticket in it
        b.save_lock(stale)
        lock = b.get_lock(conversation)
        waiting = max(t.expires for t in lock.tickets) - time.time()
        print(f"tickets in the lock: {[t.number for t in lock.tickets]} (A's finished ticket {first} is back); "
              f"B's ticket {second} is locked out: {lock.is_locked(second)}, for {waiting:.0f} s")
        return 0 if lock.is_locked(second) else 1
    finally:
        process.terminate()
        process.wait()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
