"""The test server process of tests/pro/serve.py, driven over loopback."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import requests

from tests import children
from tests.e2e.harness import QUIET_ENV, ROOT, free_port


class ServedChannel:
    def __init__(
        self, log_path: Path, options: Dict[str, Any], model: Optional[Path],
        channel: str = "connectors.servicenow.ServiceNowInput", env: Optional[Dict[str, str]] = None,
        endpoints: Optional[Dict[str, Any]] = None, python: str = sys.executable, cors: Optional[str] = None,
        port: Optional[int] = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        command = [python, "-m", "tests.pro.serve", "--port", str(self.port), "--channel", channel,
                   "--options", json.dumps(options)]
        if model is not None:
            command += ["--model", str(model)]
        if endpoints:
            command += ["--endpoints", json.dumps(endpoints)]
        if cors:
            command += ["--cors", cors]
        self._log = open(log_path, "w")
        self.process = children.register(subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=self._log, text=True,
            env={**os.environ, **QUIET_ENV, "LITELLM_LOCAL_MODEL_COST_MAP": "True", **(env or {})},
        ))

    def wait_until_serving(self) -> "ServedChannel":
        # Each line is Sanic's banner or ours; the process ends the stream if it dies.
        for line in self.process.stdout:  # type: ignore[union-attr]
            if line.startswith("serving on "):
                return self
        self.process.wait(timeout=10)
        raise AssertionError(f"the test server exited ({self.process.returncode}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def routes(self) -> List[str]:
        return requests.get(f"{self.url}/test/routes", timeout=10).json()

    def slots(self, sender: str) -> Dict[str, Any]:
        return requests.get(f"{self.url}/test/slots/{sender}", timeout=10).json() or {}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self._log.close()
