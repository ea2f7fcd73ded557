"""Side by side: the same scenarios run for several builds in one run, in
alternating order, reduced to medians, ratios and their run-to-run spread,
and judged against the targets of issue 18 (the speed of the first build,
e1be15c).

A scenario's result is a tree of dicts; every number in it is a leaf with a
path (``handoff_messages/virtual_agent/forward_ms/median``). Each build runs
each scenario ``runs`` times; a build's value of a measure is the median
over its runs, its spread the lowest and highest run. The ratio is this
build's value over the other's (``this / baseline``: above 1 is slower for a
time), its spread the lowest and highest ratio of runs taken in the same
round (run *i* of one build against run *i* of the other, next to each other
in time)."""

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

Tree = Dict[str, Any]
Row = Tuple[str, str, str, Optional[bool]]

REFERENCE = "this"
BASELINE = "baseline"

#: (path pattern, label, unit): the measures a side-by-side table shows. A
#: ``*`` matches one path segment; the label's ``{0}``, ``{1}`` are what they
#: matched.
MEASURES: Sequence[Tuple[str, str, str]] = (
    ("bot_turns/*/latency_ms/servicenow/median", "1. bot turn, {0}: median", "ms"),
    ("bot_turns/*/median_ratio", "1. bot turn, {0}: this channel / REST", "x"),
    ("handoff_messages/*/forward_ms/median", "2. forward, {0}: server-side median", "ms"),
    ("handoff_messages/*/forward_ms/p99", "2. forward, {0}: server-side p99", "ms"),
    ("handoff_messages/*/throughput/*/messages_per_s", "2. forward throughput, {0}, {1} chats", "/s"),
    ("agent_latency/virtual_agent/latency_ms/median", "3. agent to user, virtual_agent: median", "ms"),
    ("agent_latency/virtual_agent/latency_ms/p99", "3. agent to user, virtual_agent: p99", "ms"),
    ("agent_latency/virtual_agent_as_pushed/latency_ms/median", "3. agent to user, virtual_agent, order_wait 0: median", "ms"),
    ("agent_latency/virtual_agent_as_pushed/latency_ms/p99", "3. agent to user, virtual_agent, order_wait 0: p99", "ms"),
    ("agent_latency/connect/poll_model/processing_ms/median", "3. agent to user, connect: after the poll, median", "ms"),
    ("scale/*/rows/*/bytes_per_chat", "4. memory per live chat, {0} (row {1})", "bytes"),
    ("handoff_start/*/start_ms/median", "5. handoff start, {0}: median", "ms"),
    ("channel_options/*/forward_ms/median_difference_ms", "6. {0} option: forward, median difference", "ms"),
    ("replicas/requests_per_chat_per_poll_interval", "8. two replicas: requests per chat per poll_interval", ""),
    ("channel_level/*/forward_ms/median", "9. channel level, forward, {0}: server-side median", "ms"),
    ("channel_level/*/forward_ms/p99", "9. channel level, forward, {0}: server-side p99", "ms"),
    ("channel_level/virtual_agent/agent_to_user_ms/callback_url/median", "9. channel level, agent to user, callback_url: median", "ms"),
    ("channel_level/virtual_agent/agent_to_user_ms/callback_url/p99", "9. channel level, agent to user, callback_url: p99", "ms"),
    ("channel_level/virtual_agent/agent_to_user_ms/stream/median", "9. channel level, agent to user, stream: median", "ms"),
    ("channel_level/virtual_agent/agent_to_user_ms/stream/p99", "9. channel level, agent to user, stream: p99", "ms"),
    ("reconcile/order/agent_to_user_ms/p99_difference_ms", "10. pushes in ServiceNow's order: p99 added", "ms"),
    ("reconcile/steady/requests_per_chat_per_interval", "10. reconciliation: requests per chat per interval", ""),
    ("forward_work/*/opcodes/*", "11. Python opcodes per forwarded message, {0}: {1}", ""),
    ("forward_work/*/calls/total", "11. Python calls per forwarded message, {0}", ""),
    ("agent_work/*/opcodes/*", "12. Python opcodes per agent message to the user, {0}: {1}", ""),
    ("agent_work/*/calls/total", "12. Python calls per agent message to the user, {0}", ""),
)

#: Issue 18's targets against the first build.
FORWARD_RATIO_MAX = 1.05
BOT_TURN_VS_REST_MAX = 1.02
AGENT_TO_USER_RATIO_MAX = 1.0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def flatten(tree: Any, prefix: str = "") -> Dict[str, float]:
    """Every number in a result, by path; lists of dicts by index, lists of
    numbers (the raw runs inside a result) left out."""
    found: Dict[str, float] = {}
    if isinstance(tree, dict):
        items: Iterable[Tuple[str, Any]] = tree.items()
    elif isinstance(tree, list) and tree and all(isinstance(item, dict) for item in tree):
        items = ((str(index), item) for index, item in enumerate(tree))
    else:
        return found
    for key, value in items:
        path = f"{prefix}/{key}" if prefix else str(key)
        if _number(value):
            found[path] = float(value)
        else:
            found.update(flatten(value, path))
    return found


def median_tree(runs: Sequence[Any]) -> Any:
    """One result shaped like the first run, each number the median over the
    runs that have it (so the one-run table and the plot read a multi-run
    result unchanged)."""
    if not runs:
        return {}
    first = runs[0]
    if isinstance(first, dict):
        return {key: median_tree([run[key] for run in runs if isinstance(run, dict) and key in run]) for key in first}
    if isinstance(first, list) and first and all(isinstance(item, dict) for item in first):
        if all(isinstance(run, list) and len(run) == len(first) for run in runs):
            return [median_tree([run[index] for run in runs]) for index in range(len(first))]
        return first
    if _number(first):
        values = [run for run in runs if _number(run)]
        middle = statistics.median(values)
        if all(isinstance(value, int) for value in values) and float(middle).is_integer():
            return int(middle)  # counts stay counts
        return round(middle, 4)
    return first


def _match(pattern: str, path: str) -> Optional[List[str]]:
    wanted, parts = pattern.split("/"), path.split("/")
    if len(wanted) != len(parts):
        return None
    matched = []
    for want, part in zip(wanted, parts):
        if want == "*":
            matched.append(part)
        elif want != part:
            return None
    return matched


@dataclass
class Measure:
    path: str
    label: str
    unit: str
    #: Per build: the value of each of its runs (None where a run lacks it).
    runs: Dict[str, List[Optional[float]]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Measure":
        """Back from a results file (``as_dict``)."""
        return cls(data["path"], data["label"], data["unit"], {build: list(values["runs"]) for build, values in data["builds"].items()})

    def value(self, build: str) -> Optional[float]:
        values = [value for value in self.runs.get(build, []) if value is not None]
        return statistics.median(values) if values else None

    def spread(self, build: str) -> Optional[Tuple[float, float]]:
        values = [value for value in self.runs.get(build, []) if value is not None]
        return (min(values), max(values)) if values else None

    def ratio(self, other: str, reference: str = REFERENCE) -> Optional[float]:
        mine, theirs = self.value(reference), self.value(other)
        if mine is None or not theirs:
            return None
        return mine / theirs

    def round_ratios(self, other: str, reference: str = REFERENCE) -> List[float]:
        return [
            mine / theirs
            for mine, theirs in zip(self.runs.get(reference, []), self.runs.get(other, []))
            if mine is not None and theirs
        ]

    def as_dict(self, builds: Sequence[str], reference: str = REFERENCE) -> Dict[str, Any]:
        data: Dict[str, Any] = {"path": self.path, "label": self.label, "unit": self.unit, "builds": {}}
        for build in builds:
            spread = self.spread(build)
            data["builds"][build] = {
                "median": _round(self.value(build)),
                "runs": [_round(value) for value in self.runs.get(build, [])],
                "spread": [_round(spread[0]), _round(spread[1])] if spread else None,
            }
            if build != reference:
                ratios = self.round_ratios(build, reference)
                data["builds"][build]["ratio"] = _round(self.ratio(build, reference))
                data["builds"][build]["round_ratios"] = [_round(ratio) for ratio in ratios]
        return data


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 4)


def measures(runs: Mapping[str, Mapping[str, Sequence[Tree]]], reference: str = REFERENCE) -> List[Measure]:
    """The table's measures from ``runs[scenario][build]`` (each build's
    results, in run order), for every path the reference build has (or,
    when the reference did not run a scenario, the first build that did)."""
    found: List[Measure] = []
    for scenario, by_build in runs.items():
        flat = {build: [flatten({scenario: result}) for result in results] for build, results in by_build.items()}
        leader = reference if flat.get(reference) else next((build for build in flat if flat[build]), None)
        if leader is None:
            continue
        # In the order the scenario reports them (virtual_agent before connect, ...).
        paths = list(dict.fromkeys(path for run in flat[leader] for path in run))
        for pattern, label, unit in MEASURES:
            if not pattern.startswith(scenario + "/") and pattern != scenario:
                continue
            for path in paths:
                matched = _match(pattern, path)
                if matched is None:
                    continue
                measure = Measure(path, label.format(*matched), unit)
                for build, build_runs in flat.items():
                    measure.runs[build] = [run.get(path) for run in build_runs]
                found.append(measure)
    return found


# -- the checks --------------------------------------------------------------


def checks(found: Sequence[Measure], builds: Sequence[str], baseline: str = BASELINE, baseline_label: str = "") -> List[Row]:
    """Issue 18's targets: forward at most x1.05 of the baseline (server-side
    median, per backend), agent to user no slower than the baseline (Virtual
    Agent median), a bot turn outside a handoff at most x1.02 of Rasa's REST
    channel (this build's own ratio, in each of scenario 1's cases)."""
    by_path = {measure.path: measure for measure in found}
    rows: List[Row] = []
    against = baseline_label or baseline
    if baseline in builds:
        for backend in ("virtual_agent", "connect"):
            measure = by_path.get(f"handoff_messages/{backend}/forward_ms/median")
            if measure is not None and measure.ratio(baseline) is not None:
                ratio = measure.ratio(baseline)
                rows.append((
                    f"forward, {backend}: server-side median vs {against}",
                    _versus(measure, baseline),
                    f"<= x{FORWARD_RATIO_MAX:.2f}",
                    ratio <= FORWARD_RATIO_MAX,
                ))
        # Like for like: each push shown as it came, all a build before
        # issue 19 does. The default's wait for ServiceNow's order is shown
        # beside it, for what it costs, not against the target.
        for result, label, judged in (
            ("virtual_agent_as_pushed", "order_wait 0", True),
            ("virtual_agent", "default, with the read for ServiceNow's order", False),
        ):
            measure = by_path.get(f"agent_latency/{result}/latency_ms/median")
            if measure is None or measure.ratio(baseline) is None:
                continue
            ratio = measure.ratio(baseline)
            met: Optional[bool] = True
            note = ""
            if ratio > AGENT_TO_USER_RATIO_MAX:
                rounds = measure.round_ratios(baseline)
                # Slower at the median, but not in every round: the runs' noise.
                met = None if rounds and min(rounds) <= AGENT_TO_USER_RATIO_MAX else False
                note = "; within the runs' spread" if met is None else ""
            rows.append((
                f"agent to user, virtual_agent ({label}): median vs {against}",
                _versus(measure, baseline) + note,
                "no slower (<= x1.00)" if judged else "(shown, not a target)",
                met if judged else None,
            ))
    for measure in found:
        matched = _match("bot_turns/*/median_ratio", measure.path)
        value = measure.value(REFERENCE)
        if matched is None or value is None:
            continue
        spread = measure.spread(REFERENCE)
        result = f"x{value:.3f}" + (f" (runs x{spread[0]:.3f}-x{spread[1]:.3f})" if spread and spread[0] != spread[1] else "")
        others = [f"{build} x{measure.value(build):.3f}" for build in builds if build != REFERENCE and measure.value(build) is not None]
        if others:
            result += "; " + ", ".join(others)
        rows.append((f"bot turn vs Rasa's REST channel, {matched[0]}", result, f"<= x{BOT_TURN_VS_REST_MAX:.2f}", value <= BOT_TURN_VS_REST_MAX))
    return rows


def _versus(measure: Measure, other: str) -> str:
    mine, theirs, ratio = measure.value(REFERENCE), measure.value(other), measure.ratio(other)
    rounds = measure.round_ratios(other)
    text = f"{mine:.2f} vs {theirs:.2f} ms, x{ratio:.3f}"
    if len(rounds) > 1:
        text += f" (runs x{min(rounds):.3f}-x{max(rounds):.3f})"
    return text


# -- formatting --------------------------------------------------------------


def format_value(value: Optional[float], unit: str, spread: Optional[Tuple[float, float]] = None) -> str:
    if value is None:
        return "-"
    digits = 3 if unit == "x" else (0 if unit in ("bytes", "/s") or abs(value) >= 100 else 2)
    shown = f"x{value:.{digits}f}" if unit == "x" else f"{value:.{digits}f}" + (f" {unit}" if unit and unit != "/s" else unit)
    if spread is not None and spread[0] != spread[1]:
        shown += f" ({spread[0]:.{digits}f}-{spread[1]:.{digits}f})"
    return shown


def table(found: Sequence[Measure], builds: Sequence[str], reference: str = REFERENCE) -> List[List[str]]:
    """Rows of strings: measure, each build's median (spread), each other
    build's ratio (spread of the rounds' ratios)."""
    others = [build for build in builds if build != reference]
    header = ["Measure", *builds, *[f"{reference}/{other}" for other in others]]
    rows = [header]
    for measure in found:
        row = [measure.label]
        row += [format_value(measure.value(build), measure.unit, measure.spread(build)) for build in builds]
        for other in others:
            ratio, rounds = measure.ratio(other, reference), measure.round_ratios(other, reference)
            spread = (min(rounds), max(rounds)) if len(rounds) > 1 else None
            row.append(format_value(ratio, "x", spread))
        rows.append(row)
    return rows
