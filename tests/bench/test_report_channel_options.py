"""Scenario 6's rows in the target table: each option's variants side by side,
the Redis forwarding target judged on the difference of medians, and a
missing redis-server reported rather than crashing the table."""

from bench import report


def stats(median: float, p99: float) -> dict:
    return {"count": 100, "median": median, "p95": p99, "p99": p99, "mean": median}


def pair(base: str, base_median: float, other: str, other_median: float, p99: float = 5.0) -> dict:
    return {
        base: stats(base_median, p99),
        other: stats(other_median, p99),
        "median_ratio": round(other_median / base_median, 4),
        "median_difference_ms": round(other_median - base_median, 3),
    }


def results(store: dict) -> dict:
    metrics = {"bot_turn_ms": pair("off", 7.0, "on", 7.1), "forward_ms": pair("off", 1.0, "on", 1.02)}
    return {"meta": {}, "scenarios": {"channel_options": {"metrics": metrics, "store": store}}}


def rows_by_measure(data: dict) -> dict:
    return {row[0]: row for row in report.targets(data)}


def test_redis_forwarding_meets_its_target_only_under_one_added_millisecond():
    store = {
        "bot_turn_ms": pair("memory", 7.0, "redis", 7.3),
        "forward_ms": pair("memory", 1.0, "redis", 1.6),
        "agent_to_user_ms": {"memory": stats(3.0, 6.0), "redis": stats(3.5, 12.0)},
        "handoff_start_ms": pair("memory", 3.0, "redis", 3.4),
        "forward_cpu": {
            label: {"cpu_ms_per_message": cpu, "messages_per_s": 900.0, "rasa_cpu_percent": 95.0}
            for label, cpu in (("memory", 0.9), ("redis", 1.1))
        },
    }
    rows = rows_by_measure(results(store))
    forward = rows["6. redis vs memory store: forward a message, server-side"]
    assert forward[1].startswith("median 1.60 vs 1.00 ms") and "+0.60 ms" in forward[1]
    assert forward[3] is True
    assert rows["6. memory store: agent to user, virtual_agent"][3] is True
    assert rows["6. redis store: agent to user, virtual_agent"][3] is False
    assert "1.10 vs 0.90 ms" in rows["6. redis vs memory store: Rasa CPU per forwarded message"][1]
    assert "x1.014" in rows["6. metrics on vs off: bot turn outside a handoff"][1]

    store["forward_ms"] = pair("memory", 1.0, "redis", 2.1)
    assert rows_by_measure(results(store))["6. redis vs memory store: forward a message, server-side"][3] is False


def test_a_skipped_redis_comparison_is_a_row_not_an_error():
    rows = rows_by_measure(results({"skipped": "redis-server is not installed"}))
    assert "skipped" in rows["6. redis vs memory store"][1]
    assert "6. metrics on vs off: forward a message, server-side" in rows
    assert "6. redis vs memory store" in report.table(results({"skipped": "no redis"}))
