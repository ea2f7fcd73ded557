"""The soak's report as Markdown: the tables docs/reliability.md carries."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

API_NAMES = {"virtual_agent": "Virtual Agent", "connect": "Connect", None: "both"}


def markdown(result: Dict[str, Any], meta: Dict[str, Any]) -> str:
    lines: List[str] = []
    load = result["load"]
    cpu = meta.get("cpu") or {}
    wall = cpu.get("wall") or 0
    cpu_total = sum(v for k, v in cpu.items() if k != "wall")
    during = meta.get("cpu_during_load") or {}
    lines += [
        f"Seed {meta.get('seed')}, {load['seconds']:.0f} s of load, {load['users']} users "
        f"({', '.join(API_NAMES.get(a, a) for a in load.get('apis') or [])}), {load['replicas']} replicas per API. "
        f"Verdict: **{'nothing lost, doubled or reordered beyond what the docs allow' if result['ok'] else str(result['against_docs']) + ' finding(s) against the docs'}**.",
        "",
        "| load held | |",
        "|---|---|",
        f"| handoffs (Virtual Agent / Connect) | {load['handoffs']} ({_by_api(load['handoffs_by_api'])}) |",
        f"| most handoffs live at once | {load['max_concurrent_handoffs']} |",
        f"| user messages to agents / agent messages to users | {load['user_messages']} / {load['agent_messages']} |",
        f"| webhook requests (incl. resends) | {load['webhook_requests']} ({load['webhook_requests_per_s']}/s) |",
        f"| SSE connections (reconnects included) / items received | {load['sse_connections']} / {load['items_received']} |",
    ]
    if during.get("wall"):
        used = sum(v for k, v in during.items() if k != "wall")
        lines.append(f"| CPU used by all processes during the load (restarts included) | {used:.0f} s in "
                     f"{during['wall']:.0f} s: {used / during['wall']:.2f} cores |")
    elif cpu_total and wall:
        lines.append(f"| CPU used (all processes, start-up included) | {cpu_total:.0f} s in {wall:.0f} s: "
                     f"{cpu_total / wall:.2f} cores |")
    loads = meta.get("load_average") or []
    if loads:
        lines.append(f"| the machine's load average during the run (all users of the machine; 2 cores) | "
                     f"median {sorted(loads)[len(loads) // 2]:.1f}, max {max(loads):.1f} |")
    lines += ["", "| messages | checked | delivered | lost (against docs) | lost (allowed) | doubled (against) | "
              "doubled (allowed) | out of order (against) | out of order (allowed) | after the end was shown |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for sink, row in result["agent_to_user"].items():
        lines.append(_message_row(f"agent to user, {'SSE stream' if sink == 'sse' else 'callback_url'}", row))
    lines.append(_message_row("user to agent", result["user_to_agent"]))
    stuck, http = result["stuck"], result["http"]
    lines += [
        "",
        f"Users left in a handoff whose chat ended: during the run {_counts(stuck['during_run']['counts']) or 'none'}; "
        f"at the end {_counts(stuck['at_end']['counts']) or 'none'}; tracker slot still 'in handoff' after the "
        f"end (routing record gone) {_counts(stuck['tracker_mirror_stale']['counts']) or 'none'}.",
        f"HTTP answers to users: {http['answers']}; documented 503s {_counts(http['documented_503']) or 'none'}; "
        f"answers slower than {http['slow_answers']['over_s']:.0f} s {_counts(http['slow_answers']['by_kind']) or 'none'}"
        f"{_slowest(http['slow_answers']['slowest'])}; "
        f"other 5xx {_counts(http['other_5xx']['counts']) or 'none'}; pushes answered 5xx "
        f"{_counts(http['push_answers_5xx']) or 'none'}.",
        _bot_line(result.get("bot_turns"), result.get("replica_logs")),
        "",
        "| fault | API | fault lasted | messages sent during it | not delivered | worst latency | recovered after the lift |",
        "|---|---|---|---|---|---|---|",
    ]
    started = meta.get("load_started") or 0
    for fault in result["faults"]:
        if fault.get("started") is None:
            lines.append(f"| {fault['kind']} | {API_NAMES.get(fault.get('deployment'), '')} | {fault.get('note') or 'not run'} | | | | |")
            continue
        what = fault["kind"] + (f" (replica {fault['replica']})" if fault["kind"] in ("kill9", "sigterm") else "")
        what += f" at {fault['started'] - started:.0f} s" if started else ""
        lines.append(
            f"| {what} | {API_NAMES.get(fault.get('deployment'), '')} | {fault['fault_s']:.1f} s | "
            f"{fault['messages_in_window']} | {fault['undelivered_in_window']} | {fault['worst_latency_s']:.1f} s | "
            f"{fault['recovered_after_s']:.1f} s |"
        )
    latency = result.get("latency") or {}
    if latency:
        lines += ["", "Latency outside faults (sent to first seen): " + "; ".join(
            f"{direction.replace('_', ' ')} median {stats.get('median', 0) * 1000:.0f} ms, p99 "
            f"{stats.get('p99', 0) * 1000:.0f} ms ({stats['count']})" for direction, stats in latency.items() if stats.get("count")
        ) + "."]
    if result.get("allowed_by"):
        lines += ["", "Allowed by the docs:"] + [f"- `{cause}`: {why}" for cause, why in result["allowed_by"].items()]
    return "\n".join(lines)


def summary(result: Dict[str, Any]) -> str:
    """A few lines for the terminal."""
    lines = []
    for sink, row in result["agent_to_user"].items():
        lines.append(f"agent->user ({sink}): {_short(row)}")
    lines.append(f"user->agent: {_short(result['user_to_agent'])}")
    lines.append(f"stuck: {result['stuck']['against_docs']} against docs; 5xx against docs: {result['http']['against_docs']}")
    if "bot_turns" in result:
        lines.append(f"bot turns: {result['bot_turns']['against_docs']} against docs; "
                     f"replica tracebacks: {result['replica_logs']['against_docs']}")
    lines.append("OK" if result["ok"] else f"FAILED: {result['against_docs']} finding(s) against the docs")
    return "\n".join(lines)


def _bot_line(bot: Optional[Dict[str, Any]], logs: Optional[Dict[str, Any]]) -> str:
    """The bot's own turns and the replicas' tracebacks; empty for a report made before they were checked."""
    if bot is None or logs is None:
        return ""
    hand_back = bot["hand_back_after_agent_closed"]
    return (
        f"The bot's turns: messages to the bot answered with nothing "
        f"{_counts(bot['bot_messages_answered_with_nothing']['counts']) or 'none'}; chats the agent closed "
        f"{hand_back['closes_seen']}, hand-back questions on the stream {hand_back['questions_seen']}, "
        f"missing or doubled {_counts(hand_back['counts']) or 'none'}; end notices shown again "
        f"{_counts(bot.get('end_notices_shown_again', {}).get('counts', {})) or 'none'}. Tracebacks in the replicas' "
        f"logs: {_counts(logs['counts']) or 'none'}."
    )


def _message_row(name: str, row: Dict[str, Any]) -> str:
    lost, doubled, order = row["lost"]["counts"], row["doubled"]["counts"], row["out_of_order"]["counts"]
    after_end = row["after_end"]["counts"].get("against_docs", 0) if "after_end" in row else "-"
    return (
        f"| {name} | {row['checked']} | {row['delivered']} | {lost.get('against_docs', 0)} | {_allowed(lost)} | "
        f"{doubled.get('against_docs', 0)} | {_allowed(doubled)} | {order.get('against_docs', 0)} | {_allowed(order)} | "
        f"{after_end} |"
    )


def _slowest(slowest: Dict[str, Any]) -> str:
    return f" (slowest {slowest['seconds']:.0f} s, a {slowest['kind']} request)" if slowest else ""


def _allowed(counts: Dict[str, int]) -> str:
    allowed = {k: v for k, v in counts.items() if k != "against_docs"}
    if not allowed:
        return "0"
    return f"{sum(allowed.values())} ({', '.join(f'{k} {v}' for k, v in sorted(allowed.items()))})"


def _counts(counts: Dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def _by_api(by_api: Dict[str, int]) -> str:
    return " / ".join(str(by_api.get(api, 0)) for api in ("virtual_agent", "connect"))


def _short(row: Dict[str, Any]) -> str:
    lost = row["lost"]["counts"]
    return (f"checked {row['checked']}, delivered {row['delivered']}, lost {lost.get('against_docs', 0)} "
            f"(+{sum(v for k, v in lost.items() if k != 'against_docs')} allowed), doubled "
            f"{row['doubled']['counts'].get('against_docs', 0)}, out of order {row['out_of_order']['counts'].get('against_docs', 0)}")
