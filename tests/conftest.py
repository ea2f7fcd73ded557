import os
from pathlib import Path

import pytest

# Parallel runs: which tests share a worker, and in what order (tests/parallel.py);
# what a worker killed by a timeout left running is stopped (tests/children.py).
pytest_plugins = ["tests.parallel", "tests.children"]

ROOT = Path(__file__).resolve().parents[1]
TRAINING_INPUTS = [ROOT / "config.yml", ROOT / "domain.yml", *sorted((ROOT / "data").glob("*.yml"))]

os.environ.setdefault("RASA_TELEMETRY_ENABLED", "false")
os.environ.setdefault("SQLALCHEMY_SILENCE_UBER_WARNING", "1")


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory) -> Path:
    """The demo model: the one `make` trained when it is up to date, else a
    fresh one. None on Rasa Pro: training needs a licence there, and the
    channel-level tests talk to tests/assistant.py's DemoAssistant."""
    from connectors.servicenow.rasa_glue.versions import IS_RASA_PRO

    if IS_RASA_PRO:
        return None
    built = ROOT / "models" / "demo.tar.gz"
    if built.exists() and all(built.stat().st_mtime >= path.stat().st_mtime for path in TRAINING_INPUTS):
        return built
    from rasa.model_training import train

    output = tmp_path_factory.mktemp("model")
    result = train(
        domain=str(ROOT / "domain.yml"),
        config=str(ROOT / "config.yml"),
        training_files=[str(ROOT / "data")],
        output=str(output),
        fixed_model_name="demo",
    )
    return Path(result.model)


def _let_aioresponses_build_aiohttp_3_14_responses() -> None:
    """aiohttp 3.14 (Rasa Pro 3.21's) added a required ``stream_writer`` to
    ``ClientResponse``, which aioresponses 0.7.9 does not pass; an already
    sent request only reads its ``output_size``. Test plumbing only: the
    connector's own HTTP client is aiohttp's, untouched."""
    import inspect

    from aiohttp import ClientResponse

    if "stream_writer" not in inspect.signature(ClientResponse.__init__).parameters:
        return
    import aioresponses.core

    class SentWriter:
        output_size = 0

    class MockedResponse(ClientResponse):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("stream_writer", SentWriter())
            super().__init__(*args, **kwargs)

    aioresponses.core.ClientResponse = MockedResponse


_let_aioresponses_build_aiohttp_3_14_responses()


def pytest_report_header(config):
    from connectors.servicenow.rasa_glue.versions import RASA_NAME, python_version

    return f"suite: {RASA_NAME} on Python {python_version()}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say which Rasa this suite ran on (make test runs one suite per Rasa)."""
    from connectors.servicenow.rasa_glue.versions import RASA_NAME

    counts = {kind: len(terminalreporter.stats.get(kind, [])) for kind in ("passed", "skipped", "failed", "error")}
    parts = [f"{counts['passed']} passed", f"{counts['skipped']} skipped"]
    parts += [f"{counts[kind]} {kind if kind == 'failed' else 'errors'}" for kind in ("failed", "error") if counts[kind]]
    terminalreporter.write_line(f"{RASA_NAME} suite: {', '.join(parts)}")
