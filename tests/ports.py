"""Free loopback ports for the servers the tests start.

A port is picked when a server is configured and bound seconds later (``rasa
run`` listens only once its model is loaded). Ports the kernel hands out for
``bind(0)`` come from the ephemeral range, which every outgoing connection on
the machine also draws from: under parallel workers, thousands of short HTTP
requests could take the port in that window. So the pick is a random port
below the ephemeral range that binds now, and ``bind(0)`` only if none does."""

import random
import socket

#: Linux's default ephemeral range starts at 32768 (/proc/sys/net/ipv4/ip_local_port_range).
LOW, HIGH = 20000, 32767


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            return int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        return HIGH + 1


def _binds(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


#: Not the module's generator: a test may seed that one, and two workers would then pick alike.
_PICK = random.SystemRandom()


def free_port() -> int:
    high = min(HIGH, _ephemeral_start() - 1)
    for _ in range(50 if high > LOW else 0):
        port = _PICK.randint(LOW, high)
        if _binds(port):
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
