"""Whether a Rasa Pro licence is available: Rasa Pro's CLI (``rasa train``,
``rasa data validate``, ``rasa run``) refuses to start without one
(``rasa/__main__.py`` calls ``ensure_license_for_cli`` before any command;
``rasa/core/run.py`` validates it again on the serve path). The tests that
need Rasa Pro's CLI, training or a loaded model run only with a key."""

import os

import pytest

from connectors.servicenow.rasa_glue.versions import IS_RASA_PRO

HAS_LICENCE = bool(os.environ.get("RASA_LICENSE") or os.environ.get("RASA_PRO_LICENSE"))

needs_licence = pytest.mark.skipif(
    not (IS_RASA_PRO and HAS_LICENCE),
    reason="needs RASA_LICENSE (Rasa Pro's CLI, training and server need a licence; "
    "a free Developer Edition key works: docs/rasa-pro.md)" if IS_RASA_PRO else "a Rasa Pro test",
)
