"""Signed commands: what the response centre signs and how the unit checks it.

A command that changes what is dispensed, who is bound or what is kept (`SIGNED_COMMANDS`) carries
an Ed25519 signature by a response-centre key the unit trusts, in the request's `signature` member:

    "signature": {"alg": "ed25519", "key_id": "<16 hex>", "value": "<base64url, no padding>"}

The signed bytes are `SIGNING_CONTEXT` followed by the JSON Canonicalization Scheme (RFC 8785) of
the request object *without* its `signature` member: object members sorted by their UTF-16 code
units, no whitespace, strings with the shortest escapes, numbers as ECMAScript prints them
(integers beyond ±2^53 cannot be signed). The context prefix keeps a signature over a command from
ever being valid for anything else the same key signs. `key_id` is the first 16 hex digits of the
SHA-256 of the raw 32-byte public key; public keys are written as standard base64 of those 32
bytes. docs/response-centre-guide.md has a worked example (tests/test_command_auth.py checks it).

This module checks the signature only; the unit, the times and replays are checked by the unit
(`agent/commands.py`), because they need its id, clock and store.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

# cryptography (about 8 MB resident with its OpenSSL binding) and rfc8785 are imported only when a
# key is parsed or a command canonicalised: an idle unit never needs them (tests/test_lazy_imports).
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

SIGNING_CONTEXT = b"dispenser-command/1\n"
SIGNATURE_ALG = "ed25519"

# Read-only commands (they change nothing the unit does, and answer only on the unit's own
# response topic): everything else must be signed.
UNSIGNED_COMMANDS = frozenset({"request_status", "request_summary", "resend_from"})

# Refusal codes (CommandResponse.error.code and the command_unauthenticated event's data.code)
UNSIGNED = "unsigned"
BAD_SIGNATURE = "bad_signature"
UNKNOWN_KEY = "unknown_key"
WRONG_UNIT = "wrong_unit"
ISSUED_IN_FUTURE = "issued_in_future"
REPLAYED = "replayed"
AUTH_CODES = frozenset(
    {UNSIGNED, BAD_SIGNATURE, UNKNOWN_KEY, WRONG_UNIT, ISSUED_IN_FUTURE, REPLAYED}
)


class SignatureError(ValueError):
    """A command's signature is missing, malformed, by an unknown key or does not verify."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class KeyFormatError(ValueError):
    """A public or private key that is not base64 of 32 bytes."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    if not text or len(text) > 200 or "=" in text:
        raise ValueError("not unpadded base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_key_text(key: Ed25519PublicKey) -> str:
    """Standard base64 of the raw 32-byte public key (the form config and commands use)."""
    return base64.b64encode(key.public_bytes_raw()).decode("ascii")


def public_key_bytes(text: str) -> bytes:
    """The raw 32 bytes of a public key's text, checked without loading cryptography (config
    validation): Ed25519PublicKey.from_public_bytes refuses nothing else."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError("a public key is standard base64 of 32 bytes") from None
    if len(raw) != 32:
        raise KeyFormatError(f"a public key is 32 bytes, got {len(raw)}")
    return raw


def load_public_key(text: str) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(public_key_bytes(text))


def key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(key.public_bytes_raw()).hexdigest()[:16]


def signed_bytes(request: Mapping[str, object]) -> bytes:
    """The bytes a signature covers: the context, then RFC 8785 of the request less `signature`.

    Raises SignatureError(bad_signature) for a value RFC 8785 cannot represent (e.g. an integer
    beyond ±2^53)."""
    import rfc8785

    body = {key: value for key, value in request.items() if key != "signature"}
    try:
        return SIGNING_CONTEXT + rfc8785.dumps(body)  # type: ignore[arg-type]  # JSON values
    except (rfc8785.CanonicalizationError, ValueError, TypeError) as exc:
        raise SignatureError(BAD_SIGNATURE, f"the command cannot be canonicalised: {exc}") from None


def sign_request(request: Mapping[str, object], key: Ed25519PrivateKey) -> dict[str, object]:
    """The request with its `signature` member (any earlier one replaced)."""
    signature = key.sign(signed_bytes(request))
    signed = {k: v for k, v in request.items() if k != "signature"}
    signed["signature"] = {
        "alg": SIGNATURE_ALG,
        "key_id": key_id(key.public_key()),
        "value": _b64url(signature),
    }
    return signed


def verify_request(request: Mapping[str, object], trusted: Mapping[str, Ed25519PublicKey]) -> str:
    """Check the request's signature against the trusted keys (by key id); return the key id.

    Raises SignatureError: unsigned, bad_signature (malformed, or it does not verify),
    unknown_key (no trusted key has that id)."""
    signature = request.get("signature")
    if signature is None:
        raise SignatureError(UNSIGNED, "the command is not signed by the response centre")
    if not isinstance(signature, Mapping):
        raise SignatureError(BAD_SIGNATURE, "signature must be an object {alg, key_id, value}")
    if set(signature) != {"alg", "key_id", "value"}:
        raise SignatureError(BAD_SIGNATURE, "signature has exactly alg, key_id and value")
    alg, kid, value = signature["alg"], signature["key_id"], signature["value"]
    if alg != SIGNATURE_ALG:
        raise SignatureError(BAD_SIGNATURE, f"signature alg must be {SIGNATURE_ALG!r}")
    if not isinstance(kid, str) or not isinstance(value, str):
        raise SignatureError(BAD_SIGNATURE, "signature key_id and value are strings")
    public = trusted.get(kid)
    if public is None:
        raise SignatureError(UNKNOWN_KEY, f"key {kid[:32]!r} is not a key this unit trusts")
    try:
        raw = _unb64url(value)
    except (binascii.Error, ValueError):
        raise SignatureError(BAD_SIGNATURE, "signature value is not base64url") from None
    if len(raw) != 64:
        raise SignatureError(BAD_SIGNATURE, "an Ed25519 signature is 64 bytes")
    from cryptography.exceptions import InvalidSignature

    try:
        public.verify(raw, signed_bytes(request))
    except InvalidSignature:
        raise SignatureError(BAD_SIGNATURE, "the signature does not match the command") from None
    return kid
