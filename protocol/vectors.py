"""Byte vectors for protocol v1, kept in `vectors.json` beside this module.

The file is the contract with the dispenser firmware: the codec tests check our encoder produces
exactly these bytes and our decoder reads them back, and the simulator replays the messages to
exercise every message type over a real link. `python -m protocol.vectors --write` regenerates the
file from `SAMPLES` (only do that on purpose: a change in the bytes is a protocol change).
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cobs import cobs

from protocol import messages as m
from protocol.fields import Enum8
from protocol.framing import DELIMITER, Frame, FrameKind, NakReason, crc16
from protocol.messages import MESSAGE_TABLE, Message, encode_message

VECTORS_PATH = Path(__file__).with_name("vectors.json")

# One or more samples of every message, with awkward values: zero, maximums, non-ASCII text.
SAMPLES: tuple[Message, ...] = (
    m.Hello(req_id=1, protocol_version=1, agent_version="dispenser-agent 0.1.0"),
    m.Dispense(req_id=2, dispense_id=1, sachet_index=0),
    m.Dispense(req_id=0xFFFF, dispense_id=0xFFFFFFFF, sachet_index=0xFFFF),
    m.Discard(req_id=3, dispense_id=2, sachet_index=5),
    m.Retain(req_id=4, dispense_id=1),
    m.SetAlert(req_id=5, pattern=m.AlertPattern.URGENT),
    m.SetLock(req_id=6, locked=True),
    m.GetStatus(req_id=7),
    m.GetTime(req_id=8),
    m.SetTime(req_id=9, utc_s=1_790_000_000),
    m.FactoryReset(req_id=10, confirm=m.FACTORY_RESET_CONFIRM),
    m.Capabilities(
        req_id=1,
        protocol_version=1,
        model="SIM-100",
        serial_number="SIM0001",
        firmware_version="1.4.2",
        has_rtc=True,
        rtc_valid=True,
        rtc_utc_s=1_790_000_000,
        features=int(m.Feature.RETAIN_BIN | m.Feature.LOCK | m.Feature.TRAY_SENSOR),
    ),
    m.CommandResult(req_id=2, result=m.ResultCode.OK, detail=""),
    m.CommandResult(req_id=2, result=m.ResultCode.ALREADY_DONE, detail="dispense 1 done"),
    m.RollInserted(
        roll_id="R-2026-0042",
        patient_ref="p7f3c9a2e",
        sachet_count=56,
        next_index=0,
        first_dose_utc_s=1_790_000_000,
        last_dose_utc_s=1_791_166_400,
        expiry_utc_s=1_798_000_000,
    ),
    m.RollRemoved(roll_id="R-2026-0042"),
    m.SachetRead(roll_id="R-2026-0042", index=3, intended_utc_s=1_790_050_000, patient_ref="p7f"),
    m.DosePresented(dispense_id=1, sachet_index=0),
    m.DoseTaken(dispense_id=1, sachet_index=0),
    m.DoseRetained(dispense_id=1, sachet_index=0),
    m.ButtonPressed(button=m.ButtonId.TAKE),
    m.LidChanged(open=True),
    m.PowerChanged(mains=False, battery_pct=87),
    m.FaultChanged(fault=m.FaultCode.JAM, active=True, detail="cutter stalled æøå"),
    m.LowSupply(roll_id="R-2026-0042", remaining=4),
    m.Status(
        req_id=7,
        roll_id="",
        remaining=0,
        next_index=0,
        tray_occupied=False,
        lid_open=False,
        locked=False,
        mains=True,
        battery_pct=100,
        alert=m.AlertPattern.OFF,
        active_faults=0,
    ),
    m.TimeReport(req_id=8, rtc_valid=False, utc_s=0),
    # v1 additions (SPEC section 6), appended so the vectors above keep their bytes
    m.KeepAlive(req_id=11, timeout_s=300),
    m.KeepAlive(req_id=12, timeout_s=0),
    m.SetAlert(req_id=13, pattern=m.AlertPattern.HELD),
    m.Capabilities(
        req_id=14,
        protocol_version=1,
        model="SIM-100",
        serial_number="SIM0001",
        firmware_version="1.5.0",
        has_rtc=True,
        rtc_valid=False,
        rtc_utc_s=0,
        features=int(
            m.Feature.RETAIN_BIN
            | m.Feature.LOCK
            | m.Feature.TRAY_SENSOR
            | m.Feature.BATTERY
            | m.Feature.SACHET_READER
            | m.Feature.HELD_PATTERN
            | m.Feature.AGENT_WATCHDOG
        ),
    ),
    m.BinLevel(capacity=30, count=0),
    m.BinLevel(capacity=0xFFFF, count=0xFFFF),
)


@dataclass(frozen=True, slots=True)
class ValidVector:
    name: str
    session: int
    seq: int
    message: Message
    wire: bytes  # delimiters included


@dataclass(frozen=True, slots=True)
class InvalidVector:
    name: str
    wire: bytes
    reason: str  # the rejection counter the decoder must increment


@dataclass(frozen=True, slots=True)
class MalformedVector:
    """An intact DATA frame that `receiver` ("dispenser" or "agent") must answer with exactly
    `nak_wire` (a NAK of reason `nak`) and never deliver; `reason` is the payload decoder's
    rejection token (None: refused before the payload is read)."""

    name: str
    receiver: str
    wire: bytes
    nak: int
    nak_wire: bytes
    reason: str | None


@dataclass(frozen=True, slots=True)
class ControlVector:
    """ACK and NAK frames."""

    name: str
    frame: Frame
    wire: bytes


def message_to_json(message: Message) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(message):
        value = getattr(message, f.name)
        fields[f.name] = value.name if isinstance(value, enum.Enum) else value
    return {"type": type(message).__name__, "fields": fields}


def message_from_json(data: dict[str, Any]) -> Message:
    layout = next(lay for lay in MESSAGE_TABLE.values() if lay.cls.__name__ == data["type"])
    values: dict[str, Any] = {}
    for name, codec in zip(layout.field_names, layout.codecs, strict=True):
        raw = data["fields"][name]
        values[name] = codec.enum_type[raw] if isinstance(codec, Enum8) else raw
    return layout.cls(**values)


def _stuff(raw: bytes) -> str:
    stuffed: bytes = cobs.encode(raw)
    return (DELIMITER + stuffed + DELIMITER).hex()


def _header(version: int, kind: int, code: int, length: int, seq: int = 0) -> bytes:
    return bytes((version, kind, 0x12, 0x34, seq, code, length))


def _with_crc(body: bytes) -> bytes:
    return body + crc16(body).to_bytes(2, "big")


def _flip(raw: bytes, at: int) -> bytes:
    return raw[:at] + bytes([raw[at] ^ 0x40]) + raw[at + 1 :]


def _malformed(
    name: str,
    receiver: str,
    code: int,
    payload: bytes,
    nak: NakReason,
    reason: str | None,
    version: int = 1,
) -> dict[str, Any]:
    """An intact DATA frame (seq 9) the receiver must refuse with a NAK, never deliver."""
    frame = Frame(FrameKind.DATA, 0x1234, 9, code, payload, version)
    answer = Frame(FrameKind.NAK, 0x1234, 9, int(nak))
    return {
        "name": name,
        "receiver": receiver,
        "wire_hex": frame.encode().hex(),
        "nak": int(nak),
        "nak_wire_hex": answer.encode().hex(),
        "reason": reason,
    }


def _build() -> dict[str, Any]:
    valid = []
    for index, message in enumerate(SAMPLES):
        type_id, payload = encode_message(message)
        frame = Frame(FrameKind.DATA, session=0x1234, seq=index, code=type_id, payload=payload)
        valid.append(
            {
                "name": f"{index:02d}-{type(message).__name__}",
                "session": frame.session,
                "seq": frame.seq,
                "message": message_to_json(message),
                "wire_hex": frame.encode().hex(),
            }
        )
    control: list[dict[str, Any]] = [
        {"name": "ack", "kind": "ACK", "session": 0x1234, "seq": 7, "code": 0},
        {"name": "nak-unknown-type", "kind": "NAK", "session": 0xBEEF, "seq": 255, "code": 2},
        # v1.1: more ACK/NAK frames, at the edges of their fields and every NAK reason
        {"name": "ack-session-1-seq-0", "kind": "ACK", "session": 0x0001, "seq": 0, "code": 0},
        {
            "name": "ack-session-ffff-seq-255",
            "kind": "ACK",
            "session": 0xFFFF,
            "seq": 255,
            "code": 0,
        },
        {"name": "nak-unsupported-version", "kind": "NAK", "session": 0x1234, "seq": 0, "code": 1},
        {"name": "nak-bad-payload", "kind": "NAK", "session": 0x1234, "seq": 1, "code": 3},
        {"name": "nak-wrong-direction", "kind": "NAK", "session": 0x1234, "seq": 2, "code": 4},
    ]
    for entry in control:
        frame = Frame(FrameKind[entry["kind"]], entry["session"], entry["seq"], entry["code"])
        entry["wire_hex"] = frame.encode().hex()
    good = Frame(FrameKind.DATA, 0x1234, 0, 0x07, b"\x00\x07").encode_raw()
    bad_crc = good[:-1] + bytes([good[-1] ^ 0xFF])
    invalid = [
        {"name": "bad-crc", "wire_hex": _stuff(bad_crc), "reason": "bad_crc"},
        {"name": "truncated", "wire_hex": _stuff(good[:5]), "reason": "short"},
        # v1.1: the length field must be at most 240 (v1: 200; this vector said 201 then)
        {
            "name": "oversize-length",
            "wire_hex": _stuff(_with_crc(_header(1, 1, 0x07, 241) + b"\x00\x07")),
            "reason": "oversize_length",
        },
        {"name": "bad-cobs", "wire_hex": "00ff0100", "reason": "bad_cobs"},
        {"name": "endless", "wire_hex": "01" * 300 + "00", "reason": "oversize"},
        # v1.1 additions
        {
            "name": "bad-length-above-present",
            "wire_hex": _stuff(_with_crc(_header(1, 1, 0x07, 3) + b"\x00\x07")),
            "reason": "bad_length",
        },
        {
            "name": "bad-length-below-present",
            "wire_hex": _stuff(_with_crc(_header(1, 1, 0x07, 1) + b"\x00\x07")),
            "reason": "bad_length",
        },
        {
            "name": "bad-kind-0",
            "wire_hex": _stuff(_with_crc(_header(1, 0, 0, 0))),
            "reason": "bad_kind",
        },
        {
            "name": "bad-kind-4",
            "wire_hex": _stuff(_with_crc(_header(1, 4, 0, 0))),
            "reason": "bad_kind",
        },
        {
            "name": "oversize-frame-250-bytes",  # a whole frame longer than 249 bytes
            "wire_hex": _stuff(_with_crc(_header(1, 1, 0x07, 240) + b"\x05" * 241)),
            "reason": "oversize",
        },
        {
            "name": "oversize-stuffed-251-bytes",  # more than 250 bytes between delimiters
            "wire_hex": "00" + "05" * 251 + "00",
            "reason": "oversize",
        },
        {
            "name": "corrupted-header-byte",
            "wire_hex": _stuff(_flip(good, 3)),
            "reason": "bad_crc",
        },
        {"name": "bad-cobs-zero-code-run", "wire_hex": "0003010000", "reason": "bad_cobs"},
    ]
    malformed = [
        _malformed(
            "bool-2", "dispenser", 0x06, b"\x00\x06\x02", NakReason.BAD_PAYLOAD, "bad_field"
        ),
        _malformed(
            "str64-of-65-bytes",
            "agent",
            0x41,
            b"\x00\x02\x00\x41" + b"x" * 65,
            NakReason.BAD_PAYLOAD,
            "bad_field",
        ),
        _malformed(
            "leftover-byte",
            "dispenser",
            0x07,
            b"\x00\x07\x00",
            NakReason.BAD_PAYLOAD,
            "trailing_bytes",
        ),
        _malformed(
            "unknown-enum-alert-9",
            "dispenser",
            0x05,
            b"\x00\x05\x09",
            NakReason.BAD_PAYLOAD,
            "bad_field",
        ),
        _malformed(
            "unknown-enum-result-14",
            "agent",
            0x41,
            b"\x00\x02\x0e\x00",
            NakReason.BAD_PAYLOAD,
            "bad_field",
        ),
        _malformed(
            "bad-utf8",
            "agent",
            0x4B,
            b"\x01\x01\x02\xc3\x28",
            NakReason.BAD_PAYLOAD,
            "bad_field",
        ),
        _malformed(
            "truncated-payload",
            "dispenser",
            0x02,
            b"\x00\x02\x00\x00\x00",
            NakReason.BAD_PAYLOAD,
            "truncated",
        ),
        _malformed(
            "unknown-type-0x3f", "dispenser", 0x3F, b"\x00\x01", NakReason.UNKNOWN_TYPE, None
        ),
        _malformed("unknown-type-0x00", "agent", 0x00, b"", NakReason.UNKNOWN_TYPE, None),
        _malformed(
            "wrong-direction-result-to-dispenser",
            "dispenser",
            0x41,
            b"\x00\x02\x00\x00",
            NakReason.WRONG_DIRECTION,
            None,
        ),
        _malformed(
            "wrong-direction-hello-to-agent",
            "agent",
            0x01,
            b"\x00\x01\x01\x00",
            NakReason.WRONG_DIRECTION,
            None,
        ),
        _malformed(
            "unsupported-version-2",
            "dispenser",
            0x07,
            b"\x00\x07",
            NakReason.UNSUPPORTED_VERSION,
            None,
            version=2,
        ),
    ]
    return {
        "protocol_version": 1,
        "crc": "CRC-16/CCITT-FALSE over header+payload, big-endian",
        "valid": valid,
        "control": control,
        "invalid": invalid,
        "malformed": malformed,
    }


def load_vectors(
    path: Path = VECTORS_PATH,
) -> tuple[list[ValidVector], list[ControlVector], list[InvalidVector]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    valid = [
        ValidVector(
            name=v["name"],
            session=v["session"],
            seq=v["seq"],
            message=message_from_json(v["message"]),
            wire=bytes.fromhex(v["wire_hex"]),
        )
        for v in data["valid"]
    ]
    control = [
        ControlVector(
            name=c["name"],
            frame=Frame(FrameKind[c["kind"]], c["session"], c["seq"], c["code"]),
            wire=bytes.fromhex(c["wire_hex"]),
        )
        for c in data["control"]
    ]
    invalid = [
        InvalidVector(name=i["name"], wire=bytes.fromhex(i["wire_hex"]), reason=i["reason"])
        for i in data["invalid"]
    ]
    return valid, control, invalid


def load_malformed(path: Path = VECTORS_PATH) -> list[MalformedVector]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return [
        MalformedVector(
            name=v["name"],
            receiver=v["receiver"],
            wire=bytes.fromhex(v["wire_hex"]),
            nak=v["nak"],
            nak_wire=bytes.fromhex(v["nak_wire_hex"]),
            reason=v["reason"],
        )
        for v in data.get("malformed", [])
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="regenerate vectors.json")
    args = parser.parse_args()
    text = json.dumps(_build(), indent=1, ensure_ascii=False) + "\n"
    if args.write:
        VECTORS_PATH.write_text(text, encoding="utf-8")
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
