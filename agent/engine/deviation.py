"""Deviation (avvik) categories: the one list of what the municipality must record as a deviation.

Helsetilsynet's 2024 audit of dispensers found that events in the remote care system were not
recorded as deviations, so management could not see the risk. Every event kind that is a deviation
names its category in the catalogue (`AlertSpec.deviation`); `slot_outcome` takes it from the
outcome (`slot_outcome_deviation`); events carry it as `data.deviation`, and the summary
(`agent.deviation_summary`) counts them. `ALERT_NOT_ACKNOWLEDGED` is no event of the unit: the
summary finds it (a latched alert acknowledged too late, or not at all).

The codes are stable snake_case names (they are on the wire); the Norwegian display is what a
municipal deviation system (avvikssystem) shows.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Deviation(enum.StrEnum):
    DOSE_MISSED = "dose_missed"
    DOSE_NOT_PRESENTED = "dose_not_presented"
    DOSE_REFUSED = "dose_refused"
    DOSE_UNCONFIRMED = "dose_unconfirmed"
    DOSE_LATE = "dose_late"
    DOSE_LEFT_IN_TRAY = "dose_left_in_tray"
    ROLL_FAULT = "roll_fault"
    PLAN_MISMATCH = "plan_mismatch"
    MEDICATION_MISSING = "medication_missing"
    DISPENSING_STOPPED = "dispensing_stopped"
    TAMPERING = "tampering"
    PAUSE_OVERRUN = "pause_overrun"
    ALERT_NOT_ACKNOWLEDGED = "alert_not_acknowledged"


@dataclass(frozen=True, slots=True)
class DeviationInfo:
    display_nb: str  # as a Norwegian deviation system shows it
    meaning: str  # one line for the guide


DEVIATIONS: dict[Deviation, DeviationInfo] = {
    Deviation.DOSE_MISSED: DeviationInfo(
        "Dose ikke tatt",
        "A dose was presented in the tray and not taken within its window (or the unit could "
        "not tell it was taken).",
    ),
    Deviation.DOSE_NOT_PRESENTED: DeviationInfo(
        "Dose ikke utlevert",
        "A due dose was never presented: the dispenser was empty, faulty, out of contact, or "
        "the dispense could not be confirmed.",
    ),
    Deviation.DOSE_REFUSED: DeviationInfo(
        "Dose stoppet av kontroll",
        "The unit refused to hand over a due dose for safety: wrong or rejected roll, plan "
        "mismatch, untrusted clock, too soon after the last dose.",
    ),
    Deviation.DOSE_UNCONFIRMED: DeviationInfo(
        "Inntak ikke bekreftet",
        "The dose left the tray while the unit could not see it: confirm with the patient.",
    ),
    Deviation.DOSE_LATE: DeviationInfo(
        "Dose tatt for sent",
        "A dose was taken after its slot had already ended as missed.",
    ),
    Deviation.DOSE_LEFT_IN_TRAY: DeviationInfo(
        "Dose liggende igjen i dispenseren",
        "A dose stays in the tray that the dispenser cannot take back (during a temporary "
        "stop, or after its slot ended with the bin full or retain refused): a nurse removes it.",
    ),
    Deviation.ROLL_FAULT: DeviationInfo(
        "Feil med multidoserull",
        "Wrong, rejected or unverified roll, or a sachet for another patient, roll or order: "
        "dispensing from it stopped.",
    ),
    Deviation.PLAN_MISMATCH: DeviationInfo(
        "Doseringsplan og tidsplan stemmer ikke",
        "A sachet is packed for a time that is no dose time of the unit's schedule.",
    ),
    Deviation.MEDICATION_MISSING: DeviationInfo(
        "Legemiddel mangler",
        "The roll is empty, or not every dose for a trip could be handed over.",
    ),
    Deviation.DISPENSING_STOPPED: DeviationInfo(
        "Teknisk feil, utlevering stoppet",
        "A fault or condition stopped dispensing: jam, reader, sensor, cutter, full bin, empty "
        "battery, no contact, no schedule, untrusted clock, dispense id conflict, sachet backlog, "
        "unreadable stored state.",
    ),
    Deviation.TAMPERING: DeviationInfo(
        "Forsøk på innbrudd",
        "Attempted forced opening of the dispenser.",
    ),
    Deviation.PAUSE_OVERRUN: DeviationInfo(
        "Midlertidig stopp overskredet",
        "A temporary stop has lasted longer than the maximum: is the patient home without doses?",
    ),
    Deviation.ALERT_NOT_ACKNOWLEDGED: DeviationInfo(
        "Varsel ikke kvittert i tide",
        "A latched alert was not acknowledged by a person within the set time (found by the "
        "summary, not sent as an event).",
    ),
}

# `missed` reasons of a dose that was in the tray (lifecycle.NOT_TAKEN, RESTART_UNKNOWN,
# TRAY_UNKNOWN); every other missed reason means the dose never reached the tray. Spelled out
# here, not imported, so that the engine's reason names stay free to move.
_MISSED_IN_TRAY = frozenset({"not_taken", "restart_unknown", "tray_unknown"})

# outcome -> deviation, for the outcomes that are one whatever the reason
_OUTCOME_DEVIATIONS = {
    "refused": Deviation.DOSE_REFUSED,
    "taken_unconfirmed": Deviation.DOSE_UNCONFIRMED,
}


def slot_outcome_deviation(outcome: object, reason: object) -> Deviation | None:
    """The category of a `slot_outcome` (None: taken, skipped_paused, dispensed_for_travel)."""
    if outcome == "missed":
        return Deviation.DOSE_MISSED if reason in _MISSED_IN_TRAY else Deviation.DOSE_NOT_PRESENTED
    return _OUTCOME_DEVIATIONS.get(str(outcome))


SLOT_OUTCOME_RULE = (
    "per outcome: missed → dose_missed (it was in the tray) or dose_not_presented; "
    "refused → dose_refused; taken_unconfirmed → dose_unconfirmed"
)
