"""Command signatures (agent/contract/signing.py): the published test vector, and every way a
signature can be wrong. The expected bytes, key id and signature below were written by hand or
made once with `cryptography` alone, never with the code under test."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.contract.commands import parse_command
from agent.contract.signing import (
    SignatureError,
    key_id,
    load_public_key,
    public_key_text,
    sign_request,
    signed_bytes,
    verify_request,
)

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "response-centre-guide.md"

# The test vector of docs/response-centre-guide.md, "Signed commands".
VECTOR_SEED = bytes(range(32))  # the private key: 00 01 02 ... 1f
VECTOR_PUBLIC = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
VECTOR_KEY_ID = "56475aa75463474c"
VECTOR_REQUEST = {
    "command_id": "0b9d7c1e-3f4a-4c2b-9e8d-7a6b5c4d3e2f",
    "unit_id": "oslo-unit-0042",
    "issued_at": "2026-11-28T09:00:00Z",
    "expires_at": "2026-11-28T10:00:00Z",
    "issued_by": "operator-17",
    "command": {
        "name": "pause",
        "pause_id": "hosp-1",
        "start": "2026-11-28T12:00:00Z",
        "end": "2026-12-02T12:00:00Z",
        "reason": "hospital",
    },
}
VECTOR_BYTES = (
    b"dispenser-command/1\n"
    b'{"command":{"end":"2026-12-02T12:00:00Z","name":"pause","pause_id":"hosp-1",'
    b'"reason":"hospital","start":"2026-11-28T12:00:00Z"},'
    b'"command_id":"0b9d7c1e-3f4a-4c2b-9e8d-7a6b5c4d3e2f","expires_at":"2026-11-28T10:00:00Z",'
    b'"issued_at":"2026-11-28T09:00:00Z","issued_by":"operator-17","unit_id":"oslo-unit-0042"}'
)
VECTOR_SIGNATURE = (
    "5a9cchjBzhQJUG6kHzTZUgRaO0_ucgjQC5pfjhkR002yLVof5kaiYS4zSHuR31LsAJwf-G_hVDWeXrjJfp2mCA"
)
KEY = Ed25519PrivateKey.from_private_bytes(VECTOR_SEED)
TRUSTED = {VECTOR_KEY_ID: load_public_key(VECTOR_PUBLIC)}


def vector_signed() -> dict[str, object]:
    return {
        **VECTOR_REQUEST,
        "signature": {"alg": "ed25519", "key_id": VECTOR_KEY_ID, "value": VECTOR_SIGNATURE},
    }


def test_the_test_vector() -> None:
    assert public_key_text(KEY.public_key()) == VECTOR_PUBLIC
    assert key_id(KEY.public_key()) == VECTOR_KEY_ID
    assert signed_bytes(VECTOR_REQUEST) == VECTOR_BYTES
    assert sign_request(VECTOR_REQUEST, KEY) == vector_signed()
    assert verify_request(vector_signed(), TRUSTED) == VECTOR_KEY_ID


def test_the_guides_example_is_the_test_vector_and_verifies_as_received() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    example = re.search(r"```json\n(.*?)```", text, re.DOTALL)
    assert example is not None
    assert json.loads(example.group(1)) == vector_signed()
    request = parse_command(example.group(1).encode())  # as the unit reads it: spacing, order
    assert verify_request(request.wire, TRUSTED) == VECTOR_KEY_ID
    for value in (VECTOR_PUBLIC, VECTOR_KEY_ID, VECTOR_SIGNATURE):
        assert value in text
    shown = re.search(r"```text\n(dispenser-command/1\n.*?)\n```", text, re.DOTALL)
    assert shown is not None
    assert shown.group(1).encode() == VECTOR_BYTES


def test_member_order_and_whitespace_do_not_matter() -> None:
    reordered = dict(reversed(list(vector_signed().items())))
    payload = json.dumps(reordered, indent=3).encode()
    assert verify_request(parse_command(payload).wire, TRUSTED) == VECTOR_KEY_ID


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("unit_id",), "oslo-unit-0043"),
        (("issued_at",), "2027-11-28T09:00:00Z"),
        (("expires_at",), "2026-12-04T10:00:00Z"),
        (("command_id",), "0b9d7c1e-3f4a-4c2b-9e8d-7a6b5c4d3e30"),
        (("command", "end"), None),
        (("command", "reason"), "travel"),
    ],
)
def test_any_change_breaks_the_signature(path: tuple[str, ...], value: object) -> None:
    request = json.loads(json.dumps(vector_signed()))
    target = request
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    with pytest.raises(SignatureError) as refused:
        verify_request(request, TRUSTED)
    assert refused.value.code == "bad_signature"


def test_an_added_member_breaks_the_signature() -> None:
    request = json.loads(json.dumps(vector_signed()))
    request["command"]["take_along"] = False
    with pytest.raises(SignatureError, match="bad_signature"):
        verify_request(request, TRUSTED)


@pytest.mark.parametrize(
    ("signature", "code"),
    [
        (None, "unsigned"),
        ("abc", "bad_signature"),
        ({"alg": "rsa", "key_id": VECTOR_KEY_ID, "value": VECTOR_SIGNATURE}, "bad_signature"),
        ({"alg": "ed25519", "key_id": VECTOR_KEY_ID}, "bad_signature"),
        (
            {"alg": "ed25519", "key_id": "0123456789abcdef", "value": VECTOR_SIGNATURE},
            "unknown_key",
        ),
        ({"alg": "ed25519", "key_id": VECTOR_KEY_ID, "value": "not base64!"}, "bad_signature"),
        ({"alg": "ed25519", "key_id": VECTOR_KEY_ID, "value": "AAAA"}, "bad_signature"),
        ({"alg": "ed25519", "key_id": VECTOR_KEY_ID, "value": "A" * 86}, "bad_signature"),
        ({"alg": "ed25519", "key_id": VECTOR_KEY_ID, "value": 7}, "bad_signature"),
    ],
)
def test_malformed_and_unknown_signatures_are_refused(signature: object, code: str) -> None:
    request: dict[str, object] = {**VECTOR_REQUEST}
    if signature is not None:
        request["signature"] = signature
    with pytest.raises(SignatureError) as refused:
        verify_request(request, TRUSTED)
    assert refused.value.code == code


def test_a_key_the_unit_does_not_trust_is_unknown_even_with_a_valid_signature() -> None:
    stranger = Ed25519PrivateKey.from_private_bytes(bytes.fromhex("77" * 32))
    with pytest.raises(SignatureError, match="unknown_key"):
        verify_request(sign_request(VECTOR_REQUEST, stranger), TRUSTED)


def test_a_key_id_that_names_a_trusted_key_but_signed_by_another_fails() -> None:
    stranger = Ed25519PrivateKey.from_private_bytes(bytes.fromhex("77" * 32))
    forged = sign_request(VECTOR_REQUEST, stranger)
    forged["signature"] = {**forged["signature"], "key_id": VECTOR_KEY_ID}  # type: ignore[dict-item]
    with pytest.raises(SignatureError, match="bad_signature"):
        verify_request(forged, TRUSTED)


def test_values_rfc8785_cannot_represent_cannot_be_signed() -> None:
    with pytest.raises(SignatureError, match="bad_signature"):
        signed_bytes({**VECTOR_REQUEST, "command": {"name": "update_schedule", "version": 2**60}})


@pytest.mark.parametrize("text", ["", "AAAA", base64.b64encode(bytes(31)).decode(), "%%%"])
def test_public_keys_are_base64_of_32_bytes(text: str) -> None:
    with pytest.raises(ValueError, match="public key"):
        load_public_key(text)
