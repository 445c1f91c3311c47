"""The agent's hardware link to the dispenser.

- `transport`    the byte-stream interface (serial, BLE) and its errors
- `serial_port`  that interface over pyserial, driven by the asyncio loop's fd readiness
- `ble_transport` that interface over a GATT characteristic pair with bleak (imported lazily)
- `retry`        the reconnect policy of both links (this one and the MQTT link): tenacity's
                 full-jitter backoff, one flap rule, bounded attempts
- `session`      protocol v1 over a transport: handshake, request/response by req_id, events,
                 reconnect, link up/down reports
"""
