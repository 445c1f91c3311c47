"""Parts of the no-root demo: an embedded MQTT broker (amqtt) and a live view of the event stream.

Only the demo uses this package; the agent itself talks to whatever broker it is configured for.
amqtt is the optional extra `demo` (`pip install .[demo]`).
"""
