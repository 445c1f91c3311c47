"""Dispenser edge agent: the daemon, its dose engine, store and links."""

__version__ = "0.1.0"
