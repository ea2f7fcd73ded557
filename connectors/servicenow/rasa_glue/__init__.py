"""The Rasa boundary: the one package that imports Rasa.

``channels``   the Rasa classes the front doors build on
``slots``      the handoff slots: the durable mirror of the store's records, and every tracker event the channel writes
``pending``    tracker writes coalesced off the delivery path
``handback``   the hand-back turn (an external intent, as ``trigger_intent`` runs it)
``nlg``        saying the channel's texts through Rasa's NLG
``output``     the output channels that collect a turn or send it through the outbox
``tuning``     process-wide tuning of Rasa (``gc.freeze``, the event class cache)
``exceptions`` Rasa's exception base, for errors ``rasa run`` reports without a trace

Nothing is imported here, so ``connectors.servicenow.rasa_glue.exceptions``
stays light (the emulator imports it without loading Rasa's core).
"""
