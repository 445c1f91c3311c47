"""The MQTT contract (v1) between a unit and the municipal response centre.

Everything that crosses the broker is defined here, once: the topic tree (`topics`), the event
envelope and the list of event kinds (`events`), the retained state and heartbeat payloads
(`state`), the commands the response centre may send and our answers (`commands`). The AsyncAPI
document and the JSON Schemas under ``docs/contract/`` are generated from these models by
``python -m agent.contract.generate``; a test fails when they drift apart.

Pydantic lives only here, at the boundary; the agent's insides use frozen dataclasses.
"""
