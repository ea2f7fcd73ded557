"""``python -m soak`` (``make soak``): many faults at once under load, checked from the outside.

Three ``rasa run`` replicas per API share one ``redis-server`` (AOF on), the
ServiceNow emulator plays the instance and its agents, a small load balancer
spreads the users' requests and ServiceNow's pushes over the replicas, and a
few hundred simulated users talk to the bot, hand over, write to agents, end
chats and come back, while a seeded fault schedule kills, restarts and
starves the parts. Afterwards ``checker.py`` reads what every user and every
agent saw and counts what was lost, doubled or reordered against what the
docs promise. See docs/reliability.md, "Soak".
"""
