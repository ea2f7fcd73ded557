"""bench/scenarios/forward_work.py: counts per message, by where the code
lives, with the background window taken off. (The counting host itself,
bench/work_host.py, runs in `make bench`; starting four traced Rasa hosts
is too slow for the test suite's budget.)"""

from bench.scenarios.forward_work import per_message, place_of


def test_each_file_counts_for_where_its_code_lives():
    assert place_of("/work/p/connectors/servicenow/core/router.py") == "connector"
    assert place_of("/venv/lib/python3.10/site-packages/sanic/http.py") == "sanic"
    assert place_of("/venv/lib/python3.10/site-packages/aiohttp/client.py") == "aiohttp"
    assert place_of("/usr/lib/python3.10/asyncio/tasks.py") == "asyncio"
    assert place_of("/usr/lib/python3.10/json/__init__.py") == "other"


def test_the_window_without_messages_is_taken_off_per_message():
    busy = {
        "opcodes": {"/p/connectors/servicenow/x.py": 1_000, "/v/sanic/http.py": 500, "/lib/json/__init__.py": 300},
        "calls": {"/p/connectors/servicenow/x.py": 40, "/v/sanic/http.py": 20},
    }
    background = {"opcodes": {"/p/connectors/servicenow/x.py": 200, "/lib/json/__init__.py": 100}, "calls": {"/p/connectors/servicenow/x.py": 10}}
    result = per_message(busy, background, messages=10)
    assert result["opcodes"] == {"total": 150.0, "connector": 80.0, "sanic": 50.0, "other": 20.0}
    assert result["calls"] == {"total": 5.0, "connector": 3.0, "sanic": 2.0}
    assert result["background_opcodes_per_message"] == 30.0
