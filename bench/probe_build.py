"""What a build is, asked of the build: run with its Python (``python
bench/probe_build.py``), reads ``{"base": {...}, "options": {...}}`` on stdin
and prints one JSON line: the versions of Python, Rasa (or Rasa Pro) and
Sanic, where ``connectors.servicenow`` is imported from, and which of
``options`` the channel accepts, each tried alone on top of ``base`` through
the channel's public ``ServiceNowInput.from_credentials`` (Rasa's own way of
reading a channel's credentials).

Standalone on purpose: it runs in every build's environment (Rasa 3.6, Rasa
Pro, an old commit), so it imports nothing of the bench.
"""

import json
import platform
import sys
from importlib import metadata
from typing import Any, Dict, Optional


def version(distribution: str) -> Optional[str]:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def main() -> None:
    request = json.loads(sys.stdin.read() or "{}")
    answer: Dict[str, Any] = {
        "python": platform.python_version(),
        "rasa": version("rasa"),
        "rasa_pro": version("rasa-pro"),
        "sanic": version("sanic"),
    }
    try:
        import connectors.servicenow as package
        from connectors.servicenow import ServiceNowInput
    except Exception as error:  # any failure to import is the answer
        answer["import_error"] = f"{type(error).__name__}: {error}"
        print(json.dumps(answer))
        return
    answer["connector"] = package.__file__
    base = request.get("base") or {}
    accepted: Dict[str, bool] = {}
    errors: Dict[str, str] = {}
    for name, value in (request.get("options") or {}).items():
        try:
            ServiceNowInput.from_credentials({**base, name: value})
            accepted[name] = True
        except Exception as error:
            accepted[name] = False
            errors[name] = f"{type(error).__name__}: {error}"[:400]
    answer["accepted"] = accepted
    answer["errors"] = errors
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
