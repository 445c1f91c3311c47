"""Fuzzing at the edges (Hypothesis): the command parser, the signature check and the config
loader take any input and answer with the project's own error, never another exception and never
a hang. (The frame decoder's properties are in tests/test_protocol_properties.py.)

The suite runs a few hundred examples each; `FUZZ_EXAMPLES=20000 pytest tests/test_fuzz_edges.py`
is the longer mode.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import ConfigError, parse_config
from agent.contract.commands import CommandInvalid, parse_command
from agent.contract.signing import SignatureError, key_id, sign_request, verify_request

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
TRUSTED = {key_id(KEY.public_key()): KEY.public_key()}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=30,
)

COMMAND = {
    "command_id": "0195d3a8-7c4e-7b21-9f3a-2c1d5e6f7a8b",
    "issued_at": "2026-03-27T09:15:00Z",
    "expires_at": "2026-03-27T21:15:00Z",
    "issued_by": "operator-0042",
    "unit_id": "oslo-unit-0042",
    "command": {"name": "silence", "minutes": 5},
}


def mutated(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A valid document with some members replaced, removed or added (deep edits included)."""
    keys = sorted(base)
    return st.builds(
        lambda drop, put, extra: {
            **{k: v for k, v in base.items() if k not in drop},
            **put,
            **extra,
        },
        st.sets(st.sampled_from(keys), max_size=2),
        st.dictionaries(st.sampled_from(keys), json_values, max_size=2),
        st.dictionaries(st.text(max_size=10), json_values, max_size=2),
    )


@settings(max_examples=EXAMPLES)
@given(st.binary(max_size=400))
def test_the_command_parser_takes_any_bytes(payload: bytes) -> None:
    with contextlib.suppress(CommandInvalid):
        parse_command(payload)


@settings(max_examples=EXAMPLES)
@given(mutated(COMMAND))
def test_the_command_parser_takes_any_json_near_a_command(document: dict[str, Any]) -> None:
    with contextlib.suppress(CommandInvalid):
        parse_command(json.dumps(document).encode())


@settings(max_examples=EXAMPLES)
@given(mutated(sign_request(COMMAND, KEY)))
def test_the_signature_check_takes_any_request(request: dict[str, Any]) -> None:
    with contextlib.suppress(SignatureError):
        verify_request(request, TRUSTED)


@settings(max_examples=EXAMPLES)
@given(json_values, st.sampled_from(["alg", "key_id", "value"]))
def test_a_signature_with_any_member_value_is_refused_or_checked(
    value: object, member: str
) -> None:
    request = sign_request(COMMAND, KEY)
    signature = dict(request["signature"])  # type: ignore[call-overload]
    signature[member] = value
    try:
        verify_request({**request, "signature": signature}, TRUSTED)
    except SignatureError:
        return
    assert value == request["signature"][member]  # type: ignore[index]  # unchanged: it verifies


def test_the_fuzzed_signature_check_still_accepts_a_valid_signature() -> None:
    assert verify_request(sign_request(COMMAND, KEY), TRUSTED) == key_id(KEY.public_key())


CONFIG = {
    "unit_id": "oslo-unit-0042",
    "state_dir": "/var/lib/dispenser-agent",
    "dispenser": {"device": "/dev/ttyUSB0"},
    "mqtt": {"host": "127.0.0.1", "port": 1883},
}


@settings(max_examples=EXAMPLES)
@given(st.one_of(json_values, mutated(CONFIG)))
def test_the_config_loader_takes_any_json(raw: object) -> None:
    with contextlib.suppress(ConfigError):
        parse_config(raw)


def test_the_base_config_of_the_fuzzer_is_valid() -> None:
    assert parse_config(CONFIG).unit_id == "oslo-unit-0042"
