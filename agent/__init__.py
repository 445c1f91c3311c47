"""Dispenser edge agent: hardware link, dose engine and MQTT forwarding."""
