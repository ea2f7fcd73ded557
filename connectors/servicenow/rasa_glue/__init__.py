"""The boundary to Rasa. ``versions`` is the one place that knows which Rasa
is installed (Rasa 3.6 or Rasa Pro) and what differs between them."""
