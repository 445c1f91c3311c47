"""Shared fixtures: a private mosquitto per test (tests/broker.py)."""

from conftest_mqtt import mosquitto

__all__ = ["mosquitto"]
