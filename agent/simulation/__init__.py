"""Deterministic simulation: the dose engine and the dispenser firmware model driven by a virtual
clock, a seeded patient, a seeded nurse and a seeded fault plan, with safety invariants checked
after every step. A failing seed replays exactly: ``python -m agent.simulation.cli --seeds N``.
"""
