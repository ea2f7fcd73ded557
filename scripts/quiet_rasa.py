"""``rasa`` for ``make run``'s terminal: the same command line, with the
warning filters of ``PYTHONWARNINGS`` (scripts/run.sh hides third-party
deprecation notices with it) in force.

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
Everything else is Rasa's own ``main()``, as the ``rasa`` script runs it.
"""

import sys
import warnings

with warnings.catch_warnings():
    import sanic.app  # noqa: F401  (its filter goes when the block ends)

try:
    import matplotlib  # noqa: F401
except ImportError:  # pragma: no cover - a Rasa dependency
    pass

from rasa.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
