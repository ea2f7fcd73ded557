"""``rasa`` for ``make run``'s terminal and ``make model``: the same command
line, with the warning filters of ``PYTHONWARNINGS`` (scripts/run.sh hides
third-party deprecation notices with it) in force, and, with
``QUIET_RASA=1``, only the log lines a person needs.

``PYTHONWARNINGS`` alone is not enough, for two reasons:

* importing Sanic calls ``warnings.filterwarnings("once",
  category=DeprecationWarning)``, which goes in front of the filters Python
  made from ``PYTHONWARNINGS`` and brings back every deprecation notice of
  TensorFlow, jax and pkg_resources;
* Rasa sets UserWarnings to "once", also in front, and the notices matplotlib
  triggers in pyparsing when it is imported are UserWarnings as well as
  DeprecationWarnings.

So Sanic is imported with the filters saved and restored around it, and
matplotlib before Rasa changes them; both are imported by Rasa anyway.

``QUIET_RASA=1`` (scripts/run.sh sets it unless ``VERBOSE=1``): once Rasa has
set up its log handler at INFO, Rasa's own loggers and everything without a
level of its own go to WARNING, and the channel's loggers stay at INFO, so the
terminal shows the handoff's progress and every warning and error, not
Rasa's start-up chatter. A log level given on the command line (``-v``,
``-vv``, ``--quiet``) is taken as it is.

Everything else is Rasa's own ``main()``, as the ``rasa`` script runs it.
"""

import logging
import os
import sys
import warnings

with warnings.catch_warnings():
    import sanic.app  # noqa: F401  (its filter goes when the block ends)

try:
    import matplotlib  # noqa: F401
except ImportError:  # pragma: no cover - a Rasa dependency
    pass

import rasa.utils.io  # noqa: E402
from rasa.__main__ import main  # noqa: E402

CHANNEL_LOGGER = "connectors.servicenow"
#: INFO lines of the channel that say nothing about a conversation.
CHANNEL_START_UP_LOGGERS = ("connectors.servicenow.rasa_tuning",)


def quiet_levels() -> None:
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("rasa").setLevel(logging.WARNING)
    logging.getLogger(CHANNEL_LOGGER).setLevel(logging.INFO)
    for name in CHANNEL_START_UP_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _quiet_after_colored_logging() -> None:
    configure = rasa.utils.io.configure_colored_logging

    def configure_then_quiet(loglevel):  # type: ignore[no-untyped-def]
        configure(loglevel)
        if loglevel is None:  # no -v, -vv or --quiet given
            quiet_levels()

    rasa.utils.io.configure_colored_logging = configure_then_quiet


if __name__ == "__main__":
    if os.environ.get("QUIET_RASA") == "1":
        _quiet_after_colored_logging()
    sys.exit(main())
