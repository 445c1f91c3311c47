"""The agent's hardware link to the dispenser.

- `transport`    the byte-stream interface (serial, BLE) and its errors
- `serial_port`  that interface over pyserial, driven by the asyncio loop's fd readiness
- `ble_transport` that interface over a GATT characteristic pair with bleak (imported lazily)
- `retry`        named backoff constants and the bounded tenacity reconnect loop
- `session`      protocol v1 over a transport: handshake, request/response by req_id, events,
                 reconnect, link up/down reports
"""
