"""Which Rasa the doctor found: the one ``rasa run`` will load the channel into."""

import os

from connectors.servicenow.doctor.findings import Finding, ok, problem, warning

TOPIC = "rasa"


def check_rasa() -> Finding:
    try:
        from connectors.servicenow.rasa_glue import versions
    except ImportError as error:  # neither rasa nor rasa-pro (RasaNotInstalled says how to fix it)
        return problem(TOPIC, str(error))
    found = f"{versions.RASA_NAME} on Python {versions.python_version()}"
    if not versions.supported():
        return warning(TOPIC, f"{found}: not a Rasa this connector is made for (Rasa 3.6, Rasa Pro 3.18 or later).",
                       "Use one of those (docs/install.md).")
    if versions.IS_RASA_PRO and not (os.environ.get("RASA_LICENSE") or os.environ.get("RASA_PRO_LICENSE")):
        return warning(TOPIC, f"{found}; RASA_LICENSE is not set here, and rasa run refuses to start without it.",
                       "Export your licence key as RASA_LICENSE (docs/rasa-pro.md).")
    return ok(TOPIC, f"{found}.")
