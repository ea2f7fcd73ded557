"""The front doors: each parses and authenticates its input, hands a user's
message to the core it composes (core/), and answers its own way.

``webhook``    ``ServiceNowInput``: the REST-style webhook, the SSE stream, typing, ServiceNow's callbacks
``socketio``   ``ServiceNowSocketIOInput``: Rasa's socketio protocol (rasa-webchat), with the same routes
``shapes``     how outbox items look on a socket (rasa-webchat's message shapes)
``chat_page``  the reference chat page
``http``       what the routes share: framing, bodies within caps, the error envelope
``open_streams`` the open ``/stream`` handlers, ended when the server stops
``socket_server`` python-socketio's server, stopping its sockets' tasks with the web server
"""
