"""pytest fixtures for MQTT tests; the lead imports them into tests/conftest.py.

`mosquitto` is function-scoped: each test gets a fresh private broker (start-up is a few tens of
milliseconds), so tests that stop or restart it cannot disturb one another.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import MosquittoBroker, find_mosquitto


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: run scripts/ensure-mosquitto.sh")
    broker = MosquittoBroker(tmp_path / "mosquitto-broker")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
