"""Dose engine: schedule, dose state and alerts; pure logic driven by an injected clock."""
