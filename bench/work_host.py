"""``bench/channel_host.py`` with a count of the Python work it does, for
scenario 11: every opcode the interpreter executes and every call it makes,
by source file, between two signals.

    python bench/work_host.py --port 5105 --channel channel.json --domain domain.yml

takes ``channel_host.py``'s arguments. ``SIGUSR1`` starts a count (and
creates ``$BENCH_WORK_OUT.on`` once it is counting), ``SIGUSR2`` ends it and
writes ``{"opcodes": {file: n}, "calls": {file: n}}`` to ``$BENCH_WORK_OUT``.
With ``BENCH_WORK_FUNCTIONS=1`` it adds ``"functions": {"file:function": n}``,
the opcodes by function, to find where a difference between builds is.

A count, not a time: the same code counts the same whatever else the machine
does, so two builds compare to the opcode where their timings on a shared
machine differ by more than the few percent in question. What it leaves out
is the work done in C (aiohttp's and Sanic's parsers, the JSON codec, the
event loop), which both builds of a comparison share. Counting slows the
process by tens of times, so nothing is timed while it runs.

Standalone on purpose, as ``channel_host.py``: it runs in every build's
environment, and imports nothing of the bench.
"""

import json
import os
import runpy
import signal
import sys
import threading
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Optional

OUT = Path(os.environ["BENCH_WORK_OUT"])
HOST = Path(__file__).with_name("channel_host.py")

opcodes: "Counter[str]" = Counter()
calls: "Counter[str]" = Counter()
functions: "Counter[str]" = Counter()
BY_FUNCTION = os.environ.get("BENCH_WORK_FUNCTIONS") == "1"

Tracer = Callable[[FrameType, str, Any], Optional[Callable[..., Any]]]


def _in_frame(frame: FrameType, event: str, _arg: Any) -> Tracer:
    if event == "opcode":
        opcodes[frame.f_code.co_filename] += 1
    return _in_frame


def _in_frame_by_function(frame: FrameType, event: str, _arg: Any) -> Tracer:
    if event == "opcode":
        code = frame.f_code
        opcodes[code.co_filename] += 1
        functions[f"{code.co_filename}:{code.co_name}"] += 1
    return _in_frame_by_function


def _on_call(frame: FrameType, event: str, _arg: Any) -> Tracer:
    # A coroutine's every resume is a "call" too: the count of frames
    # entered, as a profiler counts them.
    frame.f_trace_opcodes = True
    calls[frame.f_code.co_filename] += 1
    return _in_frame_by_function if BY_FUNCTION else _in_frame


def start(*_: Any) -> None:
    opcodes.clear()
    calls.clear()
    functions.clear()
    threading.settrace(_on_call)
    sys.settrace(_on_call)
    Path(f"{OUT}.on").touch()


def stop(*_: Any) -> None:
    sys.settrace(None)
    threading.settrace(None)  # type: ignore[arg-type]
    partial = OUT.with_name(OUT.name + ".partial")
    counts = {"opcodes": opcodes, "calls": calls, **({"functions": functions} if BY_FUNCTION else {})}
    partial.write_text(json.dumps(counts))
    partial.replace(OUT)  # whole or absent, for the reader polling for it


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    sys.argv[0] = str(HOST)  # the same folder, so sys.path is as the host's own
    runpy.run_path(str(HOST), run_name="__main__")
