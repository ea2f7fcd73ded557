"""``python -m soak.explain HISTORY USER [USER ...]``: one user's run as a
timeline (seconds after the load started): what the user sent and was
answered, what reached its stream and its callback_url, what its agents did,
and the faults around. With ``--logs DIR`` also the replica log lines that
name the user or its chats. The tool to find the cause of a finding."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from soak.history import load


def timeline(history: Dict[str, Any], user: str, logs: Optional[Path] = None) -> List[str]:
    t0 = history["meta"].get("load_started") or 0.0
    rows: List[Tuple[float, str]] = []
    for send in history["sends"]:
        if send["user"] != user:
            continue
        for attempt in send["attempts"]:
            replies = attempt.get("replies")
            shown = "" if replies is None else " -> " + "; ".join(str(r.get("text", r))[:70] for r in replies)[:160]
            rows.append((attempt["t"], f"user sends [{send['kind']}] {send['text'][:40]!r}: {attempt['status']} "
                                       f"{attempt.get('reason') or ''} in {attempt['done'] - attempt['t']:.2f} s "
                                       f"(replica {attempt.get('upstream')}){shown}"))
    for item in history["received"]:
        if item["user"] != user:
            continue
        what = f"handoff active={item.get('active')} chat={item.get('chat_id')}" if item["event"] == "handoff" else (
            f"{item['event']} [{item.get('source')}] {str(item.get('text'))[:90]!r}")
        rows.append((item["t"], f"   {item['sink']:8} <- {what} (id {item.get('event_id')}, conn {item.get('conn')})"))
    for stream in history["streams"]:
        if stream["user"] == user:
            rows.append((stream["t"], f"   stream {stream['conn']} opened on replica {stream.get('upstream')}: "
                                      f"{stream.get('status')} {stream.get('reason') or ''} after "
                                      f"{stream.get('last_event_id')}; closed: {stream.get('why')}"))
    for event in history["user_events"]:
        if event["user"] == user:
            rows.append((event["t"], f"user event {event['what']} (session {event['session']}) {event.get('detail') or ''}"))
    chats = {c["chat"] for c in history["chats"] if c.get("user") == user}
    for sent in history["agent_sends"]:
        if sent["user"] == user:
            rows.append((sent["t"], f"      agent sends {sent['text'][:30]!r} in {sent['chat'][:8]}: {sent['status']} "
                                    f"(message {str(sent.get('message_id'))[:8]})"))
    for close in history["agent_closes"]:
        if close.get("user") == user or close["chat"] in chats:
            rows.append((close["t"], f"      agent closes {close['chat'][:8]}: {close['status']}"))
    for attempt in history["callbacks"]:
        if attempt["session"] in chats:
            rows.append((attempt["at"], f"      push {attempt['callback_id'][:6]} attempt {attempt['attempt']} "
                                        f"{attempt['outcome']} {attempt.get('status') or ''} "
                                        f"{','.join(attempt.get('actions') or []) or ','.join(m[:8] for m in attempt.get('message_ids') or [])}"))
    for fault in history["faults"]:
        if fault.get("started"):
            rows.append((fault["started"], f"FAULT {fault['kind']} {fault.get('deployment') or ''} "
                                           f"{fault.get('replica') if fault.get('replica') is not None else ''} starts"))
            rows.append((fault.get("lifted") or fault["started"], f"FAULT {fault['kind']} lifted"))
    lines = [f"{t - t0:8.2f}  {text}" for t, text in sorted(rows, key=lambda row: row[0])]
    if logs is not None:
        lines.append("")
        lines.append(f"replica log lines naming {user} or its chats:")
        needles = [user, *(chat for chat in chats)]
        for path in sorted(logs.glob("rasa-*.log")):
            for line in path.read_text(errors="replace").splitlines():
                if any(needle in line for needle in needles):
                    lines.append(f"{path.name}: {line}")
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak.explain", description=__doc__.split("\n\n")[0])
    parser.add_argument("history", help="history.json of a run (in the run's folder)")
    parser.add_argument("users", nargs="+")
    parser.add_argument("--logs", help="the run's folder, to add the replica log lines")
    args = parser.parse_args(argv)
    history = load(Path(args.history))
    for user in args.users:
        print(f"==== {user}")
        print("\n".join(timeline(history, user, Path(args.logs) if args.logs else None)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
