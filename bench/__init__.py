"""Benchmarks: small scripts that print what a piece of the agent costs (run by hand, not CI)."""
