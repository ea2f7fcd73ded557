"""The Rasa boundary: the one package that imports Rasa.

``versions``   which Rasa is installed (Rasa 3.6 or Rasa Pro), and every difference between them
``channels``   the Rasa classes the front doors build on
``slots``      the handoff slots: the durable mirror of the store's records, and every tracker event the channel writes
``pending``    tracker writes coalesced off the delivery path
``handback``   the hand-back turn (an external intent, as ``trigger_intent`` runs it; a CALM assistant's payload)
``nlg``        saying the channel's texts through Rasa's NLG
``output``     the output channels that collect a turn or send it through the outbox
``tuning``     process-wide tuning of Rasa (``gc.freeze``, the event class cache)
``workers``    several Sanic workers are replicas: refused without a shared store
``lock_store`` ``AtomicRedisLockStore``: Rasa's Redis lock store, safe across replicas (named in endpoints.yml)

One Rasa import lives elsewhere: ``errors.ConfigurationError`` is a
``RasaException`` (so ``rasa run`` reports it without a trace), and errors.py
is a leaf every package imports, the emulator too, without loading Rasa's core.
"""
