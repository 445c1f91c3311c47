"""The dispenser simulator: a model of the firmware speaking protocol v1 over a real pty or UART.

Product code, used by tests, the demo and hardware-in-the-loop rigs. Module map:

- `dispenser`  the firmware model (no I/O, time passed in): rolls, sachets, tray, bin, lock, faults
- `wire`       runs the model behind a `LinkEndpoint` on a pty or UART, with wire fault injection
- `ble`        the model behind the GATT pair, reached by bleak through a stand-in for bluetoothd
- `scenario`   a small line format for "at t=…, the patient takes the dose", and its player
- `sim`        the command line (`python -m hw.sim pty|uart|selftest`)
"""
