"""``python -m connectors.servicenow.doctor``: see the package docstring."""

import argparse
import asyncio
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional

from connectors.servicenow.doctor import Paths, diagnose, exit_code, render


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


def quiet_third_party() -> None:
    """The doctor's report is the output: no TensorFlow banners, no Rasa or
    library deprecation notices on the way."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("SQLALCHEMY_SILENCE_UBER_WARNING", "1")
    os.environ.setdefault("RASA_TELEMETRY_ENABLED", "false")
    warnings.filterwarnings("ignore", module=r"(?!connectors\.)")


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    quiet_third_party()
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
