"""The response centre's side of the contract: keys, signed commands, sending them to a unit.

Runs at the response centre (or on an operator's machine), never needs a unit's files; the
private key stays there. `dispenser-agent centre --help` lists the sub-commands.
"""
