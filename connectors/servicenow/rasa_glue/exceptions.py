"""Rasa's exception base, kept apart from the rest of the Rasa boundary so
that importing it loads nothing heavy."""

from rasa.shared.exceptions import RasaException

__all__ = ["RasaException"]
