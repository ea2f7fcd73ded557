"""The same wheel in a Rasa Pro project: a fresh Python 3.11+ virtualenv with
``rasa-pro==3.21.0`` (pinned with constraints-pro.txt, from the package
index; installed once and copied: tests/install/conftest.py), then the
wheel. Rasa Pro stays the one the project chose, ``pip check`` is clean,
both doors import, and the doctor runs there against the emulator the wheel
brings. Without any Rasa, importing a door says what to install. ``rasa
run`` itself needs a licence (tests/pro/test_licensed.py).
"""

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from connectors.servicenow.emulator import DEFAULT_QUEUE_SYS_ID as QUEUE_ID
from tests import children
from tests.install.conftest import ROOT, clean_env, run, venv_with

pytestmark = [pytest.mark.install, pytest.mark.timeout(2400)]

CONSTRAINTS_PRO = ROOT / "constraints-pro.txt"
RASA_PRO = "rasa-pro==3.21.0"
CALM = ROOT / "examples" / "calm"


def python_pro() -> str:
    found = subprocess.run([str(ROOT / "scripts" / "find-python-pro.sh")], capture_output=True, text=True)
    if found.returncode != 0:
        if os.environ.get("REQUIRE_RASA_PRO_TEST"):
            pytest.fail("no Python 3.11+ for the Rasa Pro install test (REQUIRE_RASA_PRO_TEST is set)")
        pytest.skip("no Python 3.11+ for the Rasa Pro install test")
    return found.stdout.strip()


def fresh_venv(where: Path) -> str:
    run([python_pro(), "-m", "venv", str(where)], cwd=where.parent, timeout=300)
    return str(where / "bin" / "python")


def constraints_for(python: str, tmp_path: Path) -> Path:
    """The frozen set on Python 3.11 (where it was resolved); elsewhere rasa-pro's pin alone."""
    minor = run([python, "-c", "import sys; print(sys.version_info[1])"], cwd=tmp_path, timeout=60).strip()
    if minor == "11":
        return CONSTRAINTS_PRO
    direct = tmp_path / "constraints-direct.txt"
    direct.write_text(RASA_PRO + "\n")
    return direct


def installed(python: str, cwd: Path) -> Dict[str, str]:
    lines = run([python, "-m", "pip", "list", "--format=freeze"], cwd=cwd, timeout=120).splitlines()
    return dict(line.split("==", 1) for line in lines if "==" in line)


def test_in_a_rasa_pro_project_the_wheel_keeps_rasa_pro_and_the_doctor_runs(wheel, tmp_path):
    # The project's Rasa Pro, copied from a template made once (tests/install/conftest.py).
    base = python_pro()
    python = str(venv_with(tmp_path / "venv", RASA_PRO, constraints_for(base, tmp_path), python=base) / "bin" / "python")
    pip = [python, "-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check"]
    run([*pip, str(wheel)], cwd=tmp_path, timeout=600)
    versions = installed(python, tmp_path)
    assert versions["rasa-pro"] == "3.21.0" and "rasa" not in versions, versions
    run([python, "-m", "pip", "check"], cwd=tmp_path, timeout=120)

    project = tmp_path / "project"
    project.mkdir()
    env = clean_env(LITELLM_LOCAL_MODEL_COST_MAP="True")
    doors = run([python, "-c", "from connectors.servicenow import ServiceNowInput, ServiceNowSocketIOInput; "
                               "import connectors.servicenow as c; print(ServiceNowInput.name(), ServiceNowSocketIOInput.name(), c.__file__)"],
                cwd=project, timeout=300, env=env)
    assert doors.split()[:2] == ["servicenow", "servicenow_socketio"] and doors.split()[2].startswith(str(tmp_path / "venv"))

    # The CALM example's files, as a team would start from them.
    for name in ("config.yml", "domain.yml", "credentials.yml"):
        (project / name).write_text((CALM / name).read_text())
    emulator = children.register(subprocess.Popen(
        [python, "-m", "connectors.servicenow.emulator", "--port", "0", "--quiet"], cwd=project,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
    try:
        line = emulator.stdout.readline()
        assert "listening on" in line, line
        doctor_env = {
            **env, "SERVICENOW_INSTANCE_URL": line.strip().rsplit(" ", 1)[-1], "SERVICENOW_API": "connect",
            "SERVICENOW_USERNAME": "rasa.integration", "SERVICENOW_PASSWORD": "secret", "SERVICENOW_QUEUE_ID": QUEUE_ID,
        }
        for name in ("CLIENT_ID", "CLIENT_SECRET", "CALLBACK_URL", "POLL_INTERVAL", "WEBHOOK_SECRET", "CHAT_PAGE",
                     "LOG_FORMAT", "REDIS_URL"):
            doctor_env[f"SERVICENOW_{name}"] = ""
        doctor = subprocess.run([python, "-m", "connectors.servicenow.doctor"], cwd=project, env=doctor_env,
                                capture_output=True, text=True, timeout=300)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        assert "Rasa Pro 3.21.0 on Python 3." in doctor.stdout
        assert "Connect queue 'IT Support' (queue_id) exists" in doctor.stdout
    finally:
        emulator.terminate()
        emulator.wait(timeout=30)


def test_without_any_rasa_the_import_says_what_to_install(wheel, tmp_path):
    python = fresh_venv(tmp_path / "venv")
    run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)], cwd=tmp_path, timeout=600)
    failed = subprocess.run([python, "-c", "from connectors.servicenow import ServiceNowInput"], cwd=tmp_path,
                            env=clean_env(), capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1
    assert "RasaNotInstalled" in failed.stderr and "rasa-servicenow-handoff[rasa-pro]" in failed.stderr, failed.stderr
