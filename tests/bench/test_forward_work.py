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


def test_a_background_with_fewer_polls_than_the_busy_window_is_scaled_up_before_it_is_taken_off():
    # Scenario 12 (Connect): 12 polls in the busy window, 8 in the background window.
    busy = {"opcodes": {"/p/connectors/servicenow/polling.py": 1_600}, "calls": {"/p/connectors/servicenow/polling.py": 60}}
    background = {"opcodes": {"/p/connectors/servicenow/polling.py": 800}, "calls": {"/p/connectors/servicenow/polling.py": 40}}
    result = per_message(busy, background, messages=4, background_scale=12 / 8)
    assert result["opcodes"] == {"total": 100.0, "connector": 100.0}
    assert result["calls"] == {"total": 0.0, "connector": 0.0}
    assert result["background_opcodes_per_message"] == 300.0


def test_counts_by_function_name_the_busiest_functions_per_message():
    busy = {
        "opcodes": {"/p/connectors/servicenow/a.py": 300, "/v/sanic/http.py": 100},
        "calls": {},
        "functions": {
            "/p/connectors/servicenow/a.py:put": 200,
            "/p/connectors/servicenow/a.py:take": 100,
            "/v/lib/python3.10/site-packages/sanic/http.py:read": 100,
        },
    }
    background = {"opcodes": {"/p/connectors/servicenow/a.py": 100}, "calls": {}, "functions": {"/p/connectors/servicenow/a.py:take": 100}}
    result = per_message(busy, background, messages=10)
    assert result["functions"] == {"connectors/servicenow/a.py:put": 20.0, "sanic/http.py:read": 10.0, "connectors/servicenow/a.py:take": 0.0}


def test_every_function_of_the_connector_is_shown_beyond_the_busiest(monkeypatch):
    monkeypatch.setattr("bench.scenarios.forward_work.FUNCTIONS_SHOWN", 1)
    busy = {
        "opcodes": {},
        "calls": {},
        "functions": {
            "/v/lib/python3.10/site-packages/aiohttp/client.py:_request": 500,
            "/v/lib/python3.10/site-packages/sanic/http.py:read": 100,
            "/p/connectors/servicenow/store/memory.py:append": 30,
        },
    }
    result = per_message(busy, {"opcodes": {}, "calls": {}}, messages=10)
    assert result["functions"] == {"aiohttp/client.py:_request": 50.0, "connectors/servicenow/store/memory.py:append": 3.0}
