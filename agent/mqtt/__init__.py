"""MQTT link to the response centre: an asyncio facade over paho-mqtt 2.x (see `link.py`)."""
