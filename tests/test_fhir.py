"""The response centre's FHIR converter: a scripted day's events (taken, missed, wrong roll,
travel), as the unit stores and publishes them, become FHIR R4 bundles that the model library
validates; every expected value is written out here."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.detectedissue import DetectedIssue
from fhir.resources.R4B.domainresource import DomainResource
from fhir.resources.R4B.flag import Flag
from fhir.resources.R4B.medicationdispense import MedicationDispense
from scripted_day import UNIT_ID, RecordedDay, record_day

from agent.cli import main as cli_main
from agent.fhir.convert import FhirConverter
from agent.fhir.mapping import CentreMapping

REPO = Path(__file__).resolve().parents[1]
FNR = "urn:oid:2.16.578.1.12.4.1.4.1"
SERIAL = "SN-000142"
CATEGORY_SYSTEM = "urn:dispenser-agent:vkp-dispense-category"
VKP = "http://ehelse.no/fhir/CodeSystem/vkp-alert-code-v090"

MAPPING: dict[str, Any] = {
    "units": [
        {
            "unit_id": UNIT_ID,
            "patient_ref": "patient-7f3a",
            "device_serial": SERIAL,
            "from": "2026-03-01T00:00:00Z",
            "until": None,
        },
        {
            "unit_id": UNIT_ID,
            "patient_ref": "patient-0001",
            "device_serial": SERIAL,
            "from": "2026-01-01T00:00:00Z",
            "until": "2026-03-01T00:00:00Z",
        },
    ],
    "patients": {
        "patient-7f3a": {
            "identifier": {"system": FNR, "value": "13097248022"},
            "reference": "Patient/4711",
            "display": "Kari Nordmann",
        },
        "patient-0001": {"identifier": {"system": FNR, "value": "01015012345"}},
    },
}
PATIENT = {
    "type": "Patient",
    "identifier": {"system": FNR, "value": "13097248022"},
    "reference": "Patient/4711",
    "display": "Kari Nordmann",
}
DEVICE = {
    "type": "Device",
    "identifier": {
        "type": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "SNO"}]
        },
        "value": SERIAL,
    },
    "display": f"Medication dispenser {SERIAL} (unit {UNIT_ID})",
}

# seq -> the resources its bundle holds (type, and the values that matter), for the whole day
EXPECTED: dict[int, list[tuple[str, dict[str, object]]]] = {
    5: [("MedicationDispense", {"category": "1.1", "at": "2026-03-02T07:00:00Z"})],
    7: [("DetectedIssue", {"code": "3.24", "severity": "moderate", "at": "2026-03-02T11:30:00Z"})],
    8: [
        ("DetectedIssue", {"code": "3.3", "severity": "high", "at": "2026-03-02T12:00:00Z"}),
        ("Flag", {"code": "3.3", "status": "active", "priority": "PH"}),
    ],
    11: [
        ("DetectedIssue", {"code": "3.5", "severity": "high", "at": "2026-03-02T13:00:00Z"}),
        ("Flag", {"code": "3.5", "status": "active", "priority": "PH"}),
    ],
    14: [("Flag", {"code": "3.5", "status": "inactive", "priority": "PH"})],
    17: [("MedicationDispense", {"category": "1.1", "at": "2026-03-02T16:00:00Z"})],
    19: [("MedicationDispense", {"category": "1.1", "at": "2026-03-02T21:00:00Z"})],
    23: [("MedicationDispense", {"category": "2", "at": "2026-03-03T05:00:00Z"})],
    25: [("MedicationDispense", {"category": "2", "at": "2026-03-03T05:00:00Z"})],
    27: [("MedicationDispense", {"category": "2", "at": "2026-03-03T05:00:00Z"})],
    29: [("MedicationDispense", {"category": "2", "at": "2026-03-03T05:00:00Z"})],
}
LAST_SEQ = 30


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RecordedDay]:
    recorded = record_day(tmp_path_factory.mktemp("day") / "agent.db")
    yield recorded
    recorded.store.close()


@pytest.fixture
def mapping_file(tmp_path: Path) -> Path:
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps(MAPPING), encoding="utf-8")
    return path


def by_seq(day: RecordedDay) -> dict[int, dict[str, Any]]:
    return {json.loads(line)["seq"]: json.loads(line) for line in day.lines}


def facts(resource: dict[str, Any]) -> tuple[str, dict[str, object]]:
    kind = resource["resourceType"]
    if kind == "MedicationDispense":
        code = resource["category"]["coding"][0]["code"]
        return kind, {"category": code, "at": resource["whenHandedOver"]}
    if kind == "DetectedIssue":
        code = resource["code"]["coding"][0]["code"]
        at = resource["identifiedDateTime"]
        return kind, {"code": code, "severity": resource["severity"], "at": at}
    priority = resource["extension"][0]["valueCodeableConcept"]["coding"][0]["code"]
    code = resource["code"]["coding"][0]["code"]
    return kind, {"code": code, "status": resource["status"], "priority": priority}


def convert_all(day: RecordedDay) -> tuple[dict[int, dict[str, Any]], FhirConverter]:
    converter = FhirConverter(CentreMapping.model_validate(MAPPING))
    bundles: dict[int, dict[str, Any]] = {}
    for line in day.lines:
        bundle = converter.convert_line(line)
        if bundle is not None:
            bundles[json.loads(line)["seq"]] = json.loads(bundle.model_dump_json())
    return bundles, converter


def test_the_day_gives_exactly_these_resources(day: RecordedDay) -> None:
    assert len(day.lines) == LAST_SEQ
    bundles, converter = convert_all(day)
    got = {seq: [facts(e["resource"]) for e in b["entry"]] for seq, b in bundles.items()}
    assert got == EXPECTED
    skipped = {s.seq for s in converter.skipped}
    assert skipped == set(range(1, LAST_SEQ + 1)) - set(EXPECTED)
    assert {s.reason for s in converter.skipped} == {"not for the patient record"}


def test_a_taken_dose_is_this_medication_dispense(day: RecordedDay) -> None:
    events = by_seq(day)
    bundles, _ = convert_all(day)
    event_id = events[5]["event_id"]
    assert bundles[5] == {
        "resourceType": "Bundle",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{event_id}"},
        "type": "transaction",
        "timestamp": "2026-03-02T07:00:00Z",
        "entry": [
            {
                "resource": {
                    "resourceType": "MedicationDispense",
                    "id": event_id,
                    "identifier": [
                        {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{event_id}"}
                    ],
                    "status": "completed",
                    "category": {
                        "coding": [
                            {
                                "system": CATEGORY_SYSTEM,
                                "code": "1.1",
                                "display": "taken by the patient",
                            }
                        ]
                    },
                    "medicationCodeableConcept": {
                        "text": "Multidose sachet (roll R1, sachet 0, due "
                        "2026-03-02T08:00:00+01:00)"
                    },
                    "subject": PATIENT,
                    "performer": [{"actor": DEVICE}],
                    "whenHandedOver": "2026-03-02T07:00:00Z",
                },
                "request": {"method": "PUT", "url": f"MedicationDispense/{event_id}"},
            }
        ],
    }


def test_the_missed_dose_is_a_detected_issue_and_a_flag(day: RecordedDay) -> None:
    events = by_seq(day)
    bundles, _ = convert_all(day)
    issue, flag = (e["resource"] for e in bundles[8]["entry"])
    assert issue["id"] == events[8]["event_id"]
    assert issue["status"] == "final"
    assert issue["code"] == {
        "coding": [
            {
                "system": VKP,
                "version": "0.9.0",
                "code": "3.3",
                "display": "medisin mangler bekreftelse",
            }
        ],
        "text": "slot_outcome",
    }
    assert issue["patient"] == PATIENT
    assert issue["author"] == DEVICE
    assert "Avvik: Dose ikke tatt (dose_missed)." in issue["detail"]
    assert "VKP severity 3." in issue["detail"]
    assert flag["status"] == "active"
    assert flag["period"] == {"start": "2026-03-02T12:00:00Z"}
    assert flag["category"][0]["coding"][0]["code"] == "drug"
    assert flag["subject"] == PATIENT


def test_the_wrong_roll_flag_closes_when_acknowledged_and_removed(day: RecordedDay) -> None:
    bundles, _ = convert_all(day)
    raised = bundles[11]["entry"][1]["resource"]
    closed = bundles[14]["entry"][0]["resource"]
    assert raised["id"] == closed["id"]  # the same Flag, updated
    assert bundles[14]["entry"][0]["request"] == {"method": "PUT", "url": f"Flag/{raised['id']}"}
    assert closed["period"] == {"start": "2026-03-02T13:00:00Z", "end": "2026-03-02T13:20:00Z"}


def test_every_bundle_and_resource_validates_with_the_library(day: RecordedDay) -> None:
    bundles, _ = convert_all(day)
    models: dict[str, type[DomainResource]] = {
        "MedicationDispense": MedicationDispense,
        "DetectedIssue": DetectedIssue,
    }
    models["Flag"] = Flag
    for bundle in bundles.values():
        Bundle.model_validate(bundle)
        for entry in bundle["entry"]:
            resource = entry["resource"]
            models[resource["resourceType"]].model_validate(resource)


def test_a_replayed_copy_gives_nothing_new_and_a_new_stream_the_same_ids(day: RecordedDay) -> None:
    first, _ = convert_all(day)
    converter = FhirConverter(CentreMapping.model_validate(MAPPING))
    line = day.lines[4]  # seq 5, taken
    assert converter.convert_line(line) is not None
    assert converter.convert_line(line) is None
    assert converter.skipped[-1].reason == "duplicate: this event_id was converted already"
    again, _ = convert_all(day)
    assert again == first


def test_an_event_with_no_person_at_its_time_is_not_converted(day: RecordedDay) -> None:
    mapping = dict(MAPPING)
    mapping["units"] = [dict(MAPPING["units"][0], until="2026-03-02T10:00:00Z")]
    converter = FhirConverter(CentreMapping.model_validate(mapping))
    assert converter.convert_line(day.lines[4]) is not None  # 07:00, inside
    assert converter.convert_line(day.lines[7]) is None  # 12:00, after the unit went back
    assert converter.skipped[-1].reason == f"no patient for unit {UNIT_ID} at that time"
    other = json.loads(day.lines[4])
    other["unit_id"] = "oslo-0002"
    other["event_id"] = other["event_id"][:-1] + ("0" if other["event_id"][-1] != "0" else "1")
    assert converter.convert_line(json.dumps(other)) is None


def test_an_event_with_an_untrusted_time_is_not_placed(day: RecordedDay) -> None:
    event = json.loads(day.lines[4])
    event["time_trust"] = "untrusted"
    converter = FhirConverter(CentreMapping.model_validate(MAPPING))
    assert converter.convert_line(json.dumps(event)) is None
    assert converter.skipped[-1].reason.startswith("time untrusted")


def test_an_assisted_patient_gets_category_1_2(day: RecordedDay) -> None:
    mapping = dict(MAPPING)
    mapping["units"] = [dict(MAPPING["units"][0], assisted=True)]
    converter = FhirConverter(CentreMapping.model_validate(mapping))
    bundle = converter.convert_line(day.lines[4])
    assert bundle is not None
    dispense = json.loads(bundle.model_dump_json())["entry"][0]["resource"]
    assert dispense["category"]["coding"][0]["code"] == "1.2"
    assert dispense["category"]["coding"][0]["display"] == "assisted"


def test_an_acknowledgement_of_an_alert_from_before_the_stream_closes_its_flag() -> None:
    ack = {
        "schema": "dispenser-event/1",
        "event_id": "01956d3a-7c00-7000-8000-000000000001",
        "unit_id": UNIT_ID,
        "seq": 40,
        "session": 2,
        "kind": "alert_acknowledged",
        "priority": "info",
        "vkp_code": None,
        "occurred_at": "2026-03-05T09:00:00Z",
        "time_trust": "synchronised",
        "replayed": False,
        "alert_id": None,
        "data": {"alert_id": "alert-000007", "kind": "dose_missed", "by": "n-1", "resolved": True},
    }
    converter = FhirConverter(CentreMapping.model_validate(MAPPING))
    bundle = converter.convert_line(json.dumps(ack))
    assert bundle is not None
    (entry,) = json.loads(bundle.model_dump_json())["entry"]
    flag = entry["resource"]
    assert flag["status"] == "inactive"
    assert flag["period"] == {"end": "2026-03-05T09:00:00Z"}
    assert flag["code"]["coding"][0]["code"] == "3.3"


def test_the_cli_converts_a_file_and_names_what_it_skipped(
    day: RecordedDay, mapping_file: Path, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(day.lines) + "\nnot json\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "agent.fhir", "--mapping", str(mapping_file), str(events)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1  # one line was no event; the others were converted
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(out) == len(EXPECTED)
    for bundle in out:
        Bundle.model_validate(bundle)
    told = [json.loads(line) for line in done.stderr.splitlines()]
    assert len([t for t in told if "skipped" in t]) == LAST_SEQ - len(EXPECTED)
    assert [t["line"] for t in told if "error" in t] == [LAST_SEQ + 1]


def test_dispenser_agent_fhir_reads_stdin(
    day: RecordedDay, mapping_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO(day.lines[4] + "\n"))
    assert cli_main(["fhir", "--mapping", str(mapping_file)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["entry"][0]["resource"]["resourceType"] == "MedicationDispense"


def test_a_mapping_that_does_not_make_sense_is_refused(tmp_path: Path, capsys: Any) -> None:
    overlapping = dict(MAPPING)
    overlapping["units"] = [MAPPING["units"][0], dict(MAPPING["units"][1], until=None)]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(overlapping), encoding="utf-8")
    assert cli_main(["fhir", "--mapping", str(path)]) == 2
    assert "two periods overlap" in capsys.readouterr().err
    unknown = dict(MAPPING)
    unknown["patients"] = {}
    path.write_text(json.dumps(unknown), encoding="utf-8")
    assert cli_main(["fhir", "--mapping", str(path)]) == 2
    assert "unknown" in capsys.readouterr().err


def test_a_dose_taken_unseen_is_an_issue_to_confirm_not_a_dispense(day: RecordedDay) -> None:
    event = json.loads(day.lines[4])  # seq 5, taken at 07:00: as if nobody had seen it taken
    event.update(priority="medium", alert_id="alert-000009")
    event["data"].update(
        outcome="taken_unconfirmed", reason="tray_emptied_unseen", deviation="dose_unconfirmed"
    )
    converter = FhirConverter(CentreMapping.model_validate(MAPPING))
    bundle = converter.convert_line(json.dumps(event))
    assert bundle is not None
    resources = [e["resource"] for e in json.loads(bundle.model_dump_json())["entry"]]
    assert [facts(r) for r in resources] == [
        ("DetectedIssue", {"code": "3", "severity": "moderate", "at": "2026-03-02T07:00:00Z"}),
        ("Flag", {"code": "3", "status": "active", "priority": "PM"}),
    ]
    assert "Avvik: Inntak ikke bekreftet (dose_unconfirmed)." in resources[0]["detail"]


def test_an_event_that_names_an_earlier_alert_raises_no_second_flag(day: RecordedDay) -> None:
    """dose_taken_late (medium, 3.3) naming the missed dose's alert in the envelope, as the
    contract says an event that refers to an alert does: an issue, not a new Flag."""
    converter = FhirConverter(CentreMapping.model_validate(MAPPING))
    for line in day.lines[:8]:  # up to seq 8, the missed dose (Flag active)
        converter.convert_line(line)
    missed = json.loads(day.lines[7])
    late = dict(missed, seq=31, kind="dose_taken_late", priority="medium")
    late["event_id"] = "01956d3a-7c00-7000-8000-000000000031"
    late["occurred_at"] = "2026-03-02T12:20:00Z"
    late["data"] = {"slot_id": "2026-03-02T12:00", "deviation": "dose_late"}
    bundle = converter.convert_line(json.dumps(late))
    assert bundle is not None
    resources = [e["resource"] for e in json.loads(bundle.model_dump_json())["entry"]]
    assert [facts(r) for r in resources] == [
        ("DetectedIssue", {"code": "3.3", "severity": "moderate", "at": "2026-03-02T12:20:00Z"})
    ]
    ack = dict(late, seq=32, kind="alert_acknowledged", priority="info", vkp_code=None)
    ack["event_id"] = "01956d3a-7c00-7000-8000-000000000032"
    ack["data"] = {"kind": "dose_missed", "by": "n-1", "resolved": True}  # id in the envelope
    closed = converter.convert_line(json.dumps(ack))
    assert closed is not None
    (entry,) = json.loads(closed.model_dump_json())["entry"]
    assert entry["resource"]["status"] == "inactive"
    assert entry["resource"]["period"] == {
        "start": "2026-03-02T12:00:00Z",
        "end": "2026-03-02T12:20:00Z",
    }
