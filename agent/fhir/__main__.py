"""`python -m agent.fhir` / `dispenser-agent fhir`: events (JSON lines) in, FHIR bundles out.

    dispenser-agent fhir --mapping centre-mapping.json < events.jsonl > bundles.jsonl

Input: one event per line, the payload exactly as received on dispenser/v1/{unit_id}/events.
Output: one FHIR R4 transaction bundle per line, for each event that belongs in the patient
record. Every event that gives no bundle is named on stderr with the reason (one JSON object a
line), so nothing is dropped silently. Exit 0; 1 if a line was no event of the contract (the other
lines are still converted); 2 if the mapping file cannot be used.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from agent.fhir.mapping import MappingError, load_mapping


def main(
    argv: Sequence[str] | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    source, sink, errors = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    parser = argparse.ArgumentParser(
        prog="dispenser-agent fhir",
        description="Convert dispenser events (JSON lines) to FHIR R4 bundles (JSON lines).",
    )
    parser.add_argument(
        "--mapping",
        type=Path,
        required=True,
        help="the centre's JSON file: unit periods -> patient_ref -> person",
    )
    parser.add_argument(
        "events", type=Path, nargs="?", help="events file (JSON lines); default stdin"
    )
    args = parser.parse_args(argv)
    try:
        mapping = load_mapping(args.mapping)
    except MappingError as exc:
        print(f"error: {exc}", file=errors)
        return 2
    # imported here: fhir.resources is the `centre` extra, not on the unit
    from agent.fhir.convert import ConversionError, FhirConverter

    converter = FhirConverter(mapping)
    status = 0
    lines = args.events.open(encoding="utf-8") if args.events else source
    try:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                bundle = converter.convert_line(line)
            except ConversionError as exc:
                print(json.dumps({"line": number, "error": str(exc)}), file=errors)
                status = 1
                continue
            if bundle is not None:
                sink.write(bundle.model_dump_json(exclude_none=True) + "\n")
            for skipped in converter.skipped:
                print(
                    json.dumps(
                        {"seq": skipped.seq, "kind": skipped.kind, "skipped": skipped.reason}
                    ),
                    file=errors,
                )
            converter.skipped.clear()
    finally:
        if args.events:
            lines.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
