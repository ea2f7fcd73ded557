"""Process-wide tuning of Rasa that the channel applies at start, each step
behind its own option (docs/configuration.md) because it reaches beyond this
channel into the whole ``rasa run`` process.

* ``freeze_gc_at_start``: ``freeze_startup_heap``.
* ``cache_event_classes``: ``cache_event_class_lookup``.
"""

import gc
import logging
from typing import Callable, Dict, Optional, Type

from rasa.shared.core.events import Event

logger = logging.getLogger(__name__)

#: The ``resolve_by_type`` Rasa shipped, kept to answer what the cache does not hold.
_RASA_RESOLVE_BY_TYPE: Callable[..., Optional[Type[Event]]] = Event.resolve_by_type


def freeze_startup_heap() -> int:
    """Collect once, then exempt every surviving object from later
    collections; returns how many were frozen. They are the long-lived
    startup heap: the model, TensorFlow, imported modules."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.info("Froze %d startup objects out of the garbage collector's scans (freeze_gc_at_start).", frozen)
    return frozen


class _EventClassCache:
    """``Event.resolve_by_type`` with the classes it found remembered.

    Rasa 3.6 finds an event's class by walking every subclass of ``Event``
    (and asking ``inspect.isabstract`` of each) for every event it reads back
    from a tracker store: about 90% of loading a tracker, 7 ms for 200 events,
    on every bot turn and on every transcript write of a handoff, in the
    event loop. A name seen once maps to the same class for the life of the
    process, so only hits are remembered; an unknown name (the ``default``
    fallback, the legacy ``topic``, the ``ValueError``) goes to Rasa each time.
    """

    def __init__(self) -> None:
        self.classes: Dict[str, Type[Event]] = {}

    def __call__(self, type_name: str, default: Optional[Type[Event]] = None) -> Optional[Type[Event]]:
        found = self.classes.get(type_name)
        if found is None:
            found = _RASA_RESOLVE_BY_TYPE(type_name, default)
            # A class of that name, not the caller's default for an unknown one.
            if found is not None and found.type_name == type_name:
                self.classes[type_name] = found
        return found


def cache_event_class_lookup() -> bool:
    """Install the cache in place of ``Event.resolve_by_type``; False when it
    was in place already (two ServiceNow channels in one process)."""
    if isinstance(Event.__dict__.get("resolve_by_type"), staticmethod) and isinstance(
        Event.__dict__["resolve_by_type"].__func__, _EventClassCache
    ):
        return False
    Event.resolve_by_type = staticmethod(_EventClassCache())
    logger.info("Rasa's event class lookup is cached (cache_event_classes).")
    return True


def uncache_event_class_lookup() -> None:
    """Put Rasa's own lookup back (tests)."""
    Event.resolve_by_type = staticmethod(_RASA_RESOLVE_BY_TYPE)
