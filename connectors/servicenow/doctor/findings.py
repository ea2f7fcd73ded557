"""What the doctor found: one ``Finding`` per check, and how they are shown."""

import re
from dataclasses import dataclass
from enum import Enum
from typing import Iterable, List, Sequence, TextIO


class Severity(str, Enum):
    OK = "ok"
    WARNING = "warning"
    PROBLEM = "problem"


@dataclass(frozen=True)
class Finding:
    severity: Severity
    #: What was checked: ``credentials``, ``options``, ``domain``, ``endpoints``, ``instance``, ``redis``.
    topic: str
    message: str
    #: What to do about it (empty for an ``ok``).
    fix: str = ""


def ok(topic: str, message: str) -> Finding:
    return Finding(Severity.OK, topic, message)


def warning(topic: str, message: str, fix: str = "") -> Finding:
    return Finding(Severity.WARNING, topic, message, fix)


def problem(topic: str, message: str, fix: str = "") -> Finding:
    return Finding(Severity.PROBLEM, topic, message, fix)


def redact(findings: Iterable[Finding], secrets: Iterable[str]) -> List[Finding]:
    """The findings with every secret value masked. The checks never quote a
    secret on purpose; this catches one that slips in through an error text."""
    values = sorted({value for value in secrets if value and len(value) >= 3}, key=len, reverse=True)
    # A secret that stands alone, not one inside a word: the emulator's password
    # "secret" must not turn the option name message_hash_secret into message_hash_***.
    patterns = [re.compile(rf"(?<![A-Za-z0-9_]){re.escape(value)}(?![A-Za-z0-9_])") for value in values]

    def scrub(text: str) -> str:
        for pattern in patterns:
            text = pattern.sub("***", text)
        return text

    return [Finding(f.severity, f.topic, scrub(f.message), scrub(f.fix)) for f in findings]


_LABELS = {Severity.OK: "ok", Severity.WARNING: "warning", Severity.PROBLEM: "PROBLEM"}


def render(findings: Sequence[Finding], out: TextIO) -> None:
    topic_width = max((len(f.topic) for f in findings), default=0)
    for finding in findings:
        label = _LABELS[finding.severity]
        out.write(f"{label:<8} {finding.topic:<{topic_width}}  {finding.message}\n")
        if finding.fix:
            indent = " " * (8 + 1 + topic_width + 2)
            for line in finding.fix.splitlines():
                out.write(f"{indent}-> {line}\n")
    counts = {severity: sum(1 for f in findings if f.severity is severity) for severity in Severity}
    out.write(
        f"\n{counts[Severity.OK]} ok, {counts[Severity.WARNING]} warning(s), {counts[Severity.PROBLEM]} problem(s)\n"
    )


def exit_code(findings: Iterable[Finding]) -> int:
    """1 when anything is a problem; warnings alone pass."""
    return 1 if any(f.severity is Severity.PROBLEM for f in findings) else 0
