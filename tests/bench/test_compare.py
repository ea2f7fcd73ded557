"""Side by side: results of several builds reduced to medians, ratios and
their spread, issue 18's checks, and the table report.py prints from a
results file. (No timing here: the numbers are made up.)"""

from bench import compare, report


def forward(median: float, p99: float = 5.0) -> dict:
    return {"forward_ms": {"count": 40, "median": median, "p95": 4.0, "p99": p99, "mean": median}, "throughput": {}}


def test_flatten_names_every_number_by_its_path_and_leaves_raw_lists_out():
    tree = {"a": {"median": 1.5, "count": 3, "ok": True, "runs": [1.0, 2.0]}, "rows": [{"bytes": 10}, {"bytes": 20}]}
    assert compare.flatten(tree) == {"a/median": 1.5, "a/count": 3.0, "rows/0/bytes": 10.0, "rows/1/bytes": 20.0}


def test_median_tree_keeps_the_shape_and_takes_each_numbers_median():
    runs = [
        {"x": {"median": 1.0, "label": "a"}, "rows": [{"n": 1}], "runs": [9.0]},
        {"x": {"median": 3.0, "label": "b"}, "rows": [{"n": 5}], "runs": [8.0]},
        {"x": {"median": 2.0, "label": "c"}, "rows": [{"n": 3}], "runs": [7.0]},
    ]
    assert compare.median_tree(runs) == {"x": {"median": 2.0, "label": "a"}, "rows": [{"n": 3}], "runs": [9.0]}
    assert compare.median_tree([runs[0]]) == runs[0]
    assert compare.median_tree([{"count": 30}, {"count": 30}]) == {"count": 30}  # a count stays an int


def two_builds(this: list, baseline: list) -> list:
    raw = {"handoff_messages": {
        "this": [{"virtual_agent": forward(value)} for value in this],
        "baseline": [{"virtual_agent": forward(value)} for value in baseline],
    }}
    return compare.measures(raw)


def test_a_measure_has_each_builds_median_spread_and_the_ratio_this_over_baseline():
    found = {measure.path: measure for measure in two_builds([2.0, 2.4, 2.2], [2.0, 1.9, 2.1])}
    measure = found["handoff_messages/virtual_agent/forward_ms/median"]
    assert measure.label == "2. forward, virtual_agent: server-side median"
    assert measure.value("this") == 2.2 and measure.spread("this") == (2.0, 2.4)
    assert measure.value("baseline") == 2.0
    assert measure.ratio("baseline") == 2.2 / 2.0
    # Run i against run i: the rounds that ran next to each other.
    assert measure.round_ratios("baseline") == [2.0 / 2.0, 2.4 / 1.9, 2.2 / 2.1]
    back = compare.Measure.from_dict(measure.as_dict(["this", "baseline"]))
    assert back.ratio("baseline") == measure.ratio("baseline")


def test_a_build_that_did_not_run_a_scenario_has_no_value_and_no_ratio():
    found = compare.measures({"channel_level": {"pro": [{"virtual_agent": forward(1.0)}]}})
    measure = found[0]
    assert measure.value("this") is None and measure.ratio("pro") is None
    assert compare.table(found, ["this", "pro"])[1][1:] == ["-", "1.00 ms", "-"]


def checks_for(found: list) -> dict:
    return {row[0]: row for row in compare.checks(found, ["this", "baseline"])}


def test_forward_is_judged_at_most_x105_of_the_baseline():
    met = checks_for(two_builds([1.70, 1.74], [1.65, 1.66]))["forward, virtual_agent: server-side median vs baseline"]
    assert met[2] == "<= x1.05" and met[3] is True
    missed = checks_for(two_builds([2.12, 2.32], [1.63, 1.81]))["forward, virtual_agent: server-side median vs baseline"]
    assert missed[3] is False
    assert "x1.291" in missed[1] and "runs x1.282-x1.301" in missed[1]


def agent(this: list, baseline: list, ordered_extra_ms: float = 0.0) -> list:
    """Agent to user, pushes shown as they came (``this``), and by default ``ordered_extra_ms`` slower."""
    def stats(median: float) -> dict:
        return {"latency_ms": {"count": 30, "median": median, "p95": 1, "p99": 1, "mean": 1}}

    def result(median: float, extra: float) -> dict:
        return {"virtual_agent_as_pushed": stats(median), "virtual_agent": stats(median + extra)}

    return compare.measures({"agent_latency": {
        "this": [result(v, ordered_extra_ms) for v in this], "baseline": [result(v, 0.0) for v in baseline],
    }})


def test_agent_to_user_must_be_no_slower_than_the_baseline_beyond_the_runs_spread():
    name = "agent to user, virtual_agent (order_wait 0): median vs baseline"
    assert checks_for(agent([4.0, 4.2], [4.3, 4.4]))[name][3] is True
    noisy = checks_for(agent([4.0, 4.8], [4.2, 4.3]))[name]  # slower at the median, faster in one round
    assert noisy[3] is None and "within the runs' spread" in noisy[1]
    assert checks_for(agent([4.6, 4.8], [4.2, 4.3]))[name][3] is False


def test_the_wait_for_servicenows_order_is_shown_beside_the_target_not_judged():
    rows = checks_for(agent([4.0, 4.2], [4.3, 4.4], ordered_extra_ms=1.0))
    assert rows["agent to user, virtual_agent (order_wait 0): median vs baseline"][3] is True
    shown = rows["agent to user, virtual_agent (default, with the read for ServiceNow's order): median vs baseline"]
    assert shown[2] == "(shown, not a target)" and shown[3] is None and "x1.17" in shown[1]


def test_a_bot_turn_is_judged_on_this_builds_own_ratio_to_rest_and_shows_the_baselines():
    def turns(ratio: float) -> dict:
        return {"memory tracker store, fresh history": {"median_ratio": ratio, "latency_ms": {"servicenow": {"median": 5.0}}}}

    found = compare.measures({"bot_turns": {"this": [turns(1.01), turns(1.03)], "baseline": [turns(0.99), turns(1.0)]}})
    row = checks_for(found)["bot turn vs Rasa's REST channel, memory tracker store, fresh history"]
    assert row[2] == "<= x1.02" and row[3] is True  # median of 1.01 and 1.03
    assert "baseline x0.995" in row[1]


def test_without_a_baseline_only_the_bot_turn_check_remains():
    found = compare.measures({"handoff_messages": {"this": [{"virtual_agent": forward(1.0)}], "pro": [{"virtual_agent": forward(1.0)}]}})
    assert compare.checks(found, ["this", "pro"]) == []


def side_by_side_results() -> dict:
    found = two_builds([2.0, 2.2], [1.8, 2.0])
    names = ["this", "baseline"]
    load = {"load_average": [0.2, 0.3, 0.4], "cpus": 2, "cpus_usable": 2}
    return {
        "meta": {
            "load": {"before": load, "after": load},
            "builds": {
                "this": {"commit": "a" * 40, "dirty": True, "rasa": "3.6.21", "python": "3.10.13", "source": "/src"},
                "baseline": {"commit": "e1be15c" + "0" * 33, "dirty": False, "rasa": "3.6.21", "python": "3.10.13", "source": "/b"},
            },
        },
        "scenarios": {},
        "comparison": {
            "builds": names,
            "runs_per_build": 2,
            "measures": [measure.as_dict(names) for measure in found],
            "checks": [{"measure": r[0], "result": r[1], "target": r[2], "met": r[3]} for r in compare.checks(found, names)],
            "skipped": {"channel_options": {"baseline": "build baseline does not know channel option(s) metrics"}},
            "runs": {"handoff_messages": {"this": [{"load_average_1min": [0.1, 0.5]}], "baseline": [{"load_average_1min": [0.3, 0.2]}]}},
        },
    }


def test_the_side_by_side_report_names_the_builds_their_load_the_ratios_skips_and_checks():
    text = report.side_by_side(side_by_side_results())
    assert "aaaaaaa+dirty" in text and "e1be15c " in text
    assert "load average (1 min): 0.20 before, 0.20 after, on 2 CPUs; during the runs 0.10-0.50" in text
    line = next(line for line in text.splitlines() if line.startswith("2. forward, virtual_agent: server-side median"))
    assert "2.10 ms (2.00-2.20)" in line and "1.90 ms (1.80-2.00)" in line and "x1.105 (1.100-1.111)" in line
    assert "channel_options [baseline]: build baseline does not know channel option(s) metrics" in text
    check = next(line for line in text.splitlines() if line.startswith("forward, virtual_agent: server-side median vs baseline"))
    assert check.rstrip().endswith("no")
