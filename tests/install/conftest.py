"""The wheel as a release would ship it, and a wheelhouse of everything it
needs, so an install into a fresh virtual environment is ``--no-index``: a
dependency the wheel does not declare is then missing as it would be for a
user, and nothing comes from the internet at test time after the first run."""

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / "constraints.txt"
WHEELHOUSES = ROOT / "build" / "install-test"
#: What pip needs to build the wheel in an isolated environment (pyproject's build-system).
BUILD_REQUIREMENTS = ["setuptools>=61", "wheel"]


def clean_env(**extra: str) -> Dict[str, str]:
    """The environment of a user's shell: nothing pointing into this checkout or its .venv."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(RASA_TELEMETRY_ENABLED="false", TF_CPP_MIN_LOG_LEVEL="2", SQLALCHEMY_SILENCE_UBER_WARNING="1", **extra)
    return env


def run(command: List[str], cwd: Path, timeout: float, env: Optional[Dict[str, str]] = None) -> str:
    done = subprocess.run(command, cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def declared_dependencies() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(r"^dependencies = \[(.*?)\]", text, re.S | re.M).group(1)


def wheelhouse_for(wheel: Path) -> Path:
    """Wheels of every dependency (and of the build requirements), kept between
    runs while constraints and dependencies stay the same."""
    key = hashlib.sha256(
        CONSTRAINTS.read_bytes() + declared_dependencies().encode() + " ".join(BUILD_REQUIREMENTS).encode()
    ).hexdigest()[:12]
    wheelhouse = WHEELHOUSES / f"wheelhouse-{key}"
    if not (wheelhouse / ".complete").exists():
        wheelhouse.mkdir(parents=True, exist_ok=True)
        # pip wheel, not pip download: sdists are built once, here, where the index is at hand.
        # The wheel requires no Rasa; its [rasa] extra brings the Rasa 3.6 a project installs first.
        run([sys.executable, "-m", "pip", "wheel", "-q", "-c", str(CONSTRAINTS), "-w", str(wheelhouse), f"{wheel}[rasa]",
             *BUILD_REQUIREMENTS], cwd=ROOT, timeout=1800)
        (wheelhouse / ".complete").touch()
    return wheelhouse


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        cwd=ROOT, timeout=300)
    (built,) = out.glob("rasa_servicenow_handoff-*.whl")
    return built
