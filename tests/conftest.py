import os
from pathlib import Path

import pytest

# Parallel runs: which tests share a worker, and in what order (tests/parallel.py).
pytest_plugins = ["tests.parallel"]

ROOT = Path(__file__).resolve().parents[1]
TRAINING_INPUTS = [ROOT / "config.yml", ROOT / "domain.yml", *sorted((ROOT / "data").glob("*.yml"))]

os.environ.setdefault("RASA_TELEMETRY_ENABLED", "false")
os.environ.setdefault("SQLALCHEMY_SILENCE_UBER_WARNING", "1")


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory) -> Path:
    """The demo model: the one `make` trained when it is up to date, else a fresh one."""
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
