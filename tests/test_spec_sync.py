"""protocol/SPEC.md and the code describe the same messages, fields and enum values."""

from __future__ import annotations

import re
from pathlib import Path

from protocol.framing import crc16
from protocol.messages import (
    MESSAGE_TABLE,
    AlertPattern,
    ButtonId,
    FaultCode,
    Feature,
    ResultCode,
)

SPEC = (Path(__file__).parents[1] / "protocol" / "SPEC.md").read_text(encoding="utf-8")


def test_message_tables_match_the_code() -> None:
    rows = re.findall(r"^\| 0x([0-9A-F]{2}) \| (\w+) \| (.+?) \|$", SPEC, flags=re.MULTILINE)
    documented = {int(type_id, 16): (name, fields) for type_id, name, fields in rows}
    in_code = {
        type_id: (
            layout.cls.__name__,
            ", ".join(
                f"{n} {c.name}" for n, c in zip(layout.field_names, layout.codecs, strict=True)
            ),
        )
        for type_id, layout in MESSAGE_TABLE.items()
    }
    assert documented == in_code


def test_enum_values_match_the_code() -> None:
    for enum_type in (ResultCode, AlertPattern, FaultCode, ButtonId):
        row = re.search(rf"^\| {enum_type.__name__} \| (.+) \|$", SPEC, flags=re.MULTILINE)
        assert row is not None, f"{enum_type.__name__} missing from SPEC.md"
        listed = ", ".join(f"{member.value} {member.name}" for member in enum_type)
        assert row.group(1) == listed


def test_feature_bits_match_the_code() -> None:
    row = re.search(r"^\| Feature \(bits of `features`\) \| (.+) \|$", SPEC, flags=re.MULTILINE)
    assert row is not None, "Feature missing from SPEC.md"
    assert row.group(1) == ", ".join(f"0x{int(bit):04X} {bit.name}" for bit in Feature)


def test_crc_check_value_in_the_spec() -> None:
    assert crc16(b"123456789") == 0x29B1
    assert "`0x29B1`" in SPEC
