"""Shared fixtures: a private mosquitto per test (tests/broker.py); Hypothesis without a
per-example deadline (CI machines are loaded: a slow example is not a failure, a wrong one is)."""

from conftest_mqtt import mosquitto
from hypothesis import settings

settings.register_profile("loaded-machine", deadline=None)
settings.load_profile("loaded-machine")

__all__ = ["mosquitto"]
