"""Scenarios 7 and 8 in the target table: Redis memory judged only for the
advised stream-node-max-bytes, the deployment's poll rate judged per chat and
poll_interval, and a missing redis-server reported rather than crashing."""


from bench import report
from bench.__main__ import SCENARIOS


def memory_row(node_bytes: int, per_chat: float, chats: int = 100_000) -> dict:
    return {"chats": chats, "stream_node_max_bytes": node_bytes, "bytes_per_chat": per_chat}


def deployment(per_interval: float, busiest: float) -> dict:
    return {
        "chats": 500,
        "requests_per_chat_per_poll_interval": per_interval,
        "busiest_chat_per_poll_interval": busiest,
        "forward": {"cpu_ms_per_message": [1.7, 1.8], "messages_per_s": 400.0, "errors": 0},
    }


def rows(scenarios: dict) -> dict:
    return {row[0]: row for row in report.targets({"meta": {}, "scenarios": scenarios})}


def test_both_scenarios_run_in_make_bench():
    assert {"redis_memory", "replicas"} <= set(SCENARIOS)


def test_memory_is_judged_for_the_advised_setting_and_reported_for_the_default():
    table = rows({"redis_memory": {"target_bytes": 2048, "rows": [memory_row(256, 1254.0), memory_row(4096, 5094.0, 10_000)]}})
    advised = table["7. redis memory, 100,000 live VA chats, stream-node-max-bytes 256"]
    default = table["7. redis memory, 10,000 live VA chats, stream-node-max-bytes 4096"]
    assert advised[1:] == ("1,254 bytes/chat", "< 2,048 bytes", True)
    assert default[3] is None
    over = rows({"redis_memory": {"target_bytes": 2048, "rows": [memory_row(256, 2100.0)]}})
    assert over["7. redis memory, 100,000 live VA chats, stream-node-max-bytes 256"][3] is False


def test_the_deployment_polls_each_chat_once_per_interval_at_most():
    measure = "8. two replicas, 500 active connect chats: ServiceNow requests"
    assert rows({"replicas": deployment(1.004, 1.005)})[measure][3] is True
    # Two replicas both polling a chat would double it.
    assert rows({"replicas": deployment(2.0, 2.0)})[measure][3] is False
    cpu = rows({"replicas": deployment(1.0, 1.0)})["8. two replicas: CPU per forwarded message, replica A / B"]
    assert cpu[1].startswith("1.70 / 1.80 ms") and cpu[3] is None


def test_without_redis_server_both_are_skipped_with_the_reason():
    skipped = {"skipped": "redis-server is not installed"}
    table = rows({"redis_memory": skipped, "replicas": skipped})
    assert table["7. redis memory per live chat"][1] == "skipped: redis-server is not installed"
    assert table["8. two replicas, connect"][1] == "skipped: redis-server is not installed"
