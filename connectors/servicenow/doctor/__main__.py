"""``python -m connectors.servicenow.doctor``: see the package docstring."""

import argparse
import asyncio
import os
import sys
import warnings
from pathlib import Path
from typing import Any, List, Optional, TextIO

OWN_CODE = os.path.join("connectors", "servicenow", "")


def quiet_third_party() -> None:
    """The doctor's report is the output: no TensorFlow banners, no Rasa or
    library deprecation notices on the way.

    Filters are not enough: importing Sanic puts ``once`` for every
    DeprecationWarning in front of them, and a notice raised while this
    module imports its own package is shown because Python attributes it to
    ``__main__``. So warnings are dropped where they are shown, unless they
    come from the connector itself."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("SQLALCHEMY_SILENCE_UBER_WARNING", "1")
    os.environ.setdefault("RASA_TELEMETRY_ENABLED", "false")
    show = warnings.showwarning

    def show_ours_only(message: Any, category: Any, filename: str, lineno: int, file: Optional[TextIO] = None,
                       line: Optional[str] = None) -> None:
        if OWN_CODE in filename:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = show_ours_only


if __name__ == "__main__":  # before the imports: see quiet_third_party
    quiet_third_party()

from connectors.servicenow.doctor import Paths, diagnose, exit_code, render  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m connectors.servicenow.doctor",
        description="Check the ServiceNow channel's configuration, domain, instance and stores.",
    )
    parser.add_argument("--credentials", default="credentials.yml", help="the file rasa run gets (credentials.yml)")
    parser.add_argument("--domain", help="domain file or folder (default: domain.yml when it exists)")
    parser.add_argument("--endpoints", help="endpoints file (default: endpoints.yml when it exists)")
    parser.add_argument("--offline", action="store_true", help="do not contact ServiceNow")
    return parser.parse_args(argv)


def _given_or_default(value: Optional[str], default: str) -> Optional[Path]:
    if value:
        return Path(value)
    return Path(default) if Path(default).exists() else None


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    paths = Paths(
        credentials=Path(args.credentials),
        domain=_given_or_default(args.domain, "domain.yml"),
        endpoints=_given_or_default(args.endpoints, "endpoints.yml"),
    )
    findings = asyncio.run(diagnose(paths, offline=args.offline))
    render(findings, sys.stdout)
    return exit_code(findings)


if __name__ == "__main__":
    sys.exit(main())
