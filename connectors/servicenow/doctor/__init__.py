"""Check a deployment of the channel before users meet it.

``python -m connectors.servicenow.doctor [--credentials credentials.yml]
[--domain domain.yml] [--endpoints endpoints.yml] [--offline]`` reads the
files the way ``rasa run`` does, reaches the ServiceNow instance with the
channel's own client, PINGs the Redis servers it is given, and prints one line
per finding (ok / warning / problem) with what to do. It exits 1 when there
is a problem, 0 otherwise. No secret is printed. See docs/doctor.md.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from connectors.servicenow.doctor.findings import Finding, Severity, exit_code, ok, redact, render, warning
from connectors.servicenow.doctor.options import ChannelOptions, check_credentials

__all__ = ["Finding", "Severity", "Paths", "diagnose", "exit_code", "render"]


@dataclass(frozen=True)
class Paths:
    credentials: Path
    #: None: not checked (no file given and none at the default place).
    domain: Optional[Path] = None
    endpoints: Optional[Path] = None


async def diagnose(paths: Paths, *, offline: bool = False) -> List[Finding]:
    # Imported on use: each pulls in part of Rasa or the HTTP client.
    from connectors.servicenow.doctor.domain import check_domain
    from connectors.servicenow.doctor.instance import check_instance
    from connectors.servicenow.doctor.stores import check_endpoints, check_redis_option

    from connectors.servicenow.doctor.rasa import check_rasa

    channel = check_credentials(paths.credentials)
    findings = [check_rasa(), *channel.findings]
    api = channel.settings.api if channel.settings else (channel.raw or {}).get("api")
    queues: List[str] = []
    if paths.domain is not None:
        messages = (channel.raw or {}).get("messages")
        named = sorted(messages) if isinstance(messages, dict) else []
        intent = channel.settings.handback_intent if channel.settings else None
        domain_findings, queues = check_domain(
            paths.domain, api if isinstance(api, str) else None, named, handback_intent=intent
        )
        findings += domain_findings
    else:
        findings.append(warning("domain", "No domain given and no domain.yml here: slots and responses not checked.",
                                "Pass --domain."))
    redis_url = _redis_url(channel)
    if paths.endpoints is not None:
        findings += check_endpoints(paths.endpoints, replicas=redis_url is not None)
    else:
        findings.append(warning("endpoints", "No endpoints.yml: Rasa keeps trackers in memory, so live handoffs are "
                                             "lost when it restarts.", "Configure a persistent tracker store."))
    if redis_url:
        findings.append(check_redis_option(redis_url))
    if channel.settings is not None:
        if offline:
            findings.append(ok("instance", "Not contacted (--offline)."))
        else:
            findings += await check_instance(channel.settings, queues)
    elif channel.raw is not None:
        findings.append(warning("instance", "Not contacted: fix the options first."))
    return redact(findings, channel.secrets)


def _redis_url(channel: ChannelOptions) -> Optional[str]:
    # ``redis_url`` arrives with the Redis store; until ServiceNowSettings
    # knows it, the raw section still says where Redis is.
    value = getattr(channel.settings, "redis_url", None)
    if value is None:
        value = (channel.raw or {}).get("redis_url")
    return value.strip() if isinstance(value, str) and value.strip() else None
