"""The catalogue of event kinds: the one list of every kind the unit sends, with its priority,
VKP code, deviation (avvik) category and one-line meaning.

The MQTT contract's `EVENT_KINDS` and the response-centre guide's table are generated from it
(`documented_kinds`), so a kind cannot be emitted without being documented, nor documented without
being emittable. `make_event` refuses a kind that is not here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from agent.engine.deviation import SLOT_OUTCOME_RULE, Deviation, slot_outcome_deviation
from agent.engine.types import EngineEvent, Priority

CLEARED_SUFFIX = "_cleared"


@dataclass(frozen=True, slots=True)
class AlertSpec:
    kind: str
    priority: Priority
    vkp_code: str | None
    meaning: str  # one line for the response centre (the guide's table)
    latched: bool = False  # stays until acknowledged by a person
    condition: bool = False  # raised once, cleared with `<kind>_cleared`
    chatty: bool = False  # rate limited
    cleared_meaning: str = ""  # conditions only: what `<kind>_cleared` means
    # the municipality records this event as a deviation of this category (agent.engine.deviation);
    # slot_outcome's depends on the outcome (`deviation_of`); `<kind>_cleared` is none
    deviation: Deviation | None = None

    def __post_init__(self) -> None:
        if self.condition != bool(self.cleared_meaning):
            raise ValueError(f"{self.kind}: a condition, and only a condition, has cleared_meaning")


_P = Priority
_D = Deviation
_ENGINE_SPECS = (
    # doses
    AlertSpec(
        "slot_outcome",
        _P.INFO,  # priority/code set per outcome, see DoseEngine._settle
        None,
        "A dose slot ended: data.outcome is taken, taken_unconfirmed, missed, refused, "
        "skipped_paused or dispensed_for_travel (exactly one per slot); missed and refused are "
        "high priority with an alert_id; taken_unconfirmed (the dose left the tray while the "
        "agent could not see it, when is not known) is medium with an alert_id: confirm with "
        "the patient; dispensed_for_travel is a dose handed over to take along (FHIR "
        "MedicationDispense category 2), taken is category 1.",
    ),
    AlertSpec(
        "dose_presented",
        _P.INFO,
        None,
        "The dose of a slot was dispensed and is waiting to be taken.",
    ),
    AlertSpec(
        "dose_not_taken",
        _P.MEDIUM,
        "3.24",
        "The presented dose is still not taken at an escalation step (before the slot ends).",
    ),
    AlertSpec(
        "dose_held",
        _P.LOW,
        None,
        "A due dose cannot be dispensed right now (reason in data); sent again only when the "
        "reason changes. The dispenser shows HELD at home until the hold ends. Reason "
        "min_interval: too soon after the last intake; it is dispensed from "
        "data.not_before_utc if its window is still open, else refused. Reason "
        "dose_stuck_in_tray: an earlier dose is still in the tray (data.stuck_slot_id, "
        "stuck_dispense_id, stuck_reason; see dose_stuck_in_tray). High with VKP 3.7 "
        "(data.dispenser_empty) when the dispenser is empty at the dose time (no roll, or no "
        "sachet left on it): a nurse brings a roll; the dose is still given if it comes before "
        "the slot ends. High once per slot; a later reason while still empty is low with "
        "data.dispenser_empty. While the clock is untrusted and the dispenser empty, the doses "
        "of the next day are named high ahead (reason clock_untrusted, data.due_utc): when "
        "each comes due is unknown. Reason dispense_ids_exhausted: the unit's dispense-id "
        "counter is at its end (a damaged store): it dispenses nothing more; service the unit.",
    ),
    AlertSpec(
        "dose_retained",
        _P.INFO,
        None,
        "The dispenser took a dose back from the tray into its bin (e.g. after a missed dose).",
    ),
    AlertSpec(
        "dose_taken_late",
        _P.MEDIUM,  # why medium and 3.3: docs/engine.md, "Minimum interval"
        "3.3",
        "A dose was taken after its slot had already ended as missed (it stayed in the tray): "
        "the missed dose is not to be given again; the next dose waits until "
        "data.next_dose_not_before_utc (the outcome does not change). alert_id names the "
        "missed dose's alert: news about it, not a second alert.",
        deviation=_D.DOSE_LATE,
    ),
    AlertSpec(
        "dose_not_in_tray",
        _P.INFO,
        None,
        "A dose the agent asked the dispenser to take back after its slot ended (or, cut "
        "while the agent could not hear it, would report left in the tray) was no longer in "
        "the tray: taken or removed while the agent could not see it; the slot's outcome "
        "does not change (slot and dispense id in data).",
    ),
    AlertSpec(
        "sachet_discarded",
        _P.INFO,
        None,
        "A sachet went to the discard bin instead of being handed over (reason in data).",
    ),
    AlertSpec(
        "plan_mismatch",
        _P.HIGH,
        "3.22",
        "The sachet at the reader is packed for a time that is no dose time of the unit's "
        "schedule: the pharmacy's dosing plan and the schedule disagree. It is kept, and no dose "
        "behind it is given, until someone decides: a schedule update that has its time, or a "
        "discard_unplanned command (roll, sachet and time in data; latched until decided).",
        latched=True,
        deviation=_D.PLAN_MISMATCH,
    ),
    AlertSpec(
        "plan_mismatch_decided",
        _P.INFO,
        None,  # resolves the plan_mismatch alert (3.22), named by alert_id: not a second one
        "A plan mismatch was decided (data.decision: discard by data.by from data.source, "
        "schedule_updated, or roll_changed on site); alert_id names the plan_mismatch alert it "
        "resolves, if any.",
    ),
    AlertSpec(
        "dose_left_in_tray",
        _P.LOW,
        None,
        "A pause began (or a travel sachet was not collected) with a dose in the tray that the "
        "dispenser cannot take back (no bin, or bin full): a nurse should remove it (slot and "
        "reason in data). The slot ended skipped_paused, not missed.",
        deviation=_D.DOSE_LEFT_IN_TRAY,
    ),
    AlertSpec(
        "dose_stuck_in_tray",
        _P.MEDIUM,
        "3.24",
        "A dose whose slot has ended (missed, or skipped for a pause) is still in the tray and "
        "the dispenser does not take it back into its bin (slot, dispense id and reason in "
        "data): bin_full, it goes back as soon as the dispenser reports room (a nurse empties "
        "the bin); retain_refused, the dispenser refused it too often, a person removes it; "
        "no_retain_bin. No later dose can be given while it is there (dose_held "
        "dose_stuck_in_tray). If the patient takes it, dose_taken_late follows and the next "
        "dose waits the minimum interval.",
        condition=True,
        cleared_meaning="The stuck dose is out of the tray: taken back into the bin, lifted out "
        "(dose_taken_late), or the tray was found empty.",
        deviation=_D.DOSE_LEFT_IN_TRAY,
    ),
    AlertSpec(
        "backlog_needs_nurse",
        _P.MEDIUM,
        "3.13",
        "More sachets on the roll are packed for past dose times (a pause, or doses not given) "
        "than the bin can take beside its reserve, or the bin level is unknown: none is "
        "discarded and the next doses wait. A nurse swaps the roll for one starting now, or "
        "takes data.sachets_to_discard sachets off the roll / empties the bin (numbers in "
        "data). Raised before a pause ends when the resume will need it.",
        condition=True,
        cleared_meaning="The sachets for past dose times are gone or fit in the bin now.",
        deviation=_D.DISPENSING_STOPPED,
    ),
    AlertSpec(
        "sachet_rejected",
        _P.HIGH,
        "3.5",
        "The sachet at the reader names another patient or roll, is out of order or carries no "
        "intended time; it is not handed over (reason in data).",
        deviation=_D.ROLL_FAULT,
    ),
    # roll
    AlertSpec(
        "roll_inserted",
        _P.INFO,
        "3.21",
        "A multidose roll was loaded (roll facts in data, never patient data).",
    ),
    AlertSpec("roll_removed", _P.INFO, "3.21", "The roll was taken out of the dispenser."),
    AlertSpec(
        "wrong_roll",
        _P.HIGH,
        "3.5",
        "The loaded roll does not belong to this unit's binding; dispensing stopped (active "
        "until removed and acknowledged).",
        latched=True,
        deviation=_D.ROLL_FAULT,
    ),
    AlertSpec(
        "wrong_roll_cleared",  # removed; the latch waits for an ack
        _P.INFO,
        None,  # news about the wrong_roll alert (3.5), named by alert_id: not a second one
        "The wrong roll was removed (alert_id names the wrong_roll alert); it stays active "
        "until acknowledged.",
    ),
    AlertSpec(
        "roll_rejected",
        _P.HIGH,
        "3.5",
        "The roll may not be used: expired, past the last date it covers, or the unit has no "
        "binding (reason in data); dispensing from it stopped.",
        condition=True,
        cleared_meaning=(
            "The roll is no longer rejected: removed, accepted, or now a wrong_roll alert."
        ),
        deviation=_D.ROLL_FAULT,
    ),
    AlertSpec(
        "roll_unverified",
        _P.MEDIUM,
        "3.5",
        "A roll is loaded that the agent did not see inserted (e.g. swapped while it was down); "
        "no dispensing until it is inserted again.",
        condition=True,
        cleared_meaning="The unverified roll was inserted again (checked) or removed.",
        deviation=_D.ROLL_FAULT,
    ),
    AlertSpec(
        "roll_empty",
        _P.MEDIUM,
        "3.6",
        "The roll has no sachets left.",
        condition=True,
        cleared_meaning="A roll with sachets left is loaded.",
        deviation=_D.MEDICATION_MISSING,
    ),
    AlertSpec(
        "low_supply",
        _P.LOW,
        "3.25",
        "Few doses left on the roll (count in data).",
        condition=True,
        cleared_meaning="The roll is no longer low (a fuller roll, or it is now empty).",
    ),
    # technical conditions
    AlertSpec(
        "no_schedule",
        _P.MEDIUM,
        "3.8",
        "The unit has no schedule: no doses will be given.",
        condition=True,
        cleared_meaning="The unit has a schedule again (or no binding any more).",
        deviation=_D.DISPENSING_STOPPED,
    ),
    AlertSpec(
        "mains_lost",
        _P.MEDIUM,
        "3.9",
        "The dispenser lost mains power and runs on battery.",
        condition=True,
        cleared_meaning="Mains power is back.",
    ),
    AlertSpec(
        "no_contact",
        _P.HIGH,
        "3.10",
        "No contact with the dispenser for longer than the limit.",
        condition=True,
        cleared_meaning="Contact with the dispenser is back.",
        deviation=_D.DISPENSING_STOPPED,
    ),
    AlertSpec(
        "lid_open",
        _P.LOW,
        "3.11",
        "The dispenser is open (rate limited).",
        condition=True,
        chatty=True,
        cleared_meaning="The dispenser is closed.",
    ),
    AlertSpec(
        "fault_tamper",
        _P.HIGH,
        "3.12",
        "Attempted forced opening of the dispenser; dispensing stopped.",
        condition=True,
        cleared_meaning="The dispenser no longer reports tampering.",
        deviation=_D.TAMPERING,
    ),
    AlertSpec(
        "fault_bin_full",
        _P.HIGH,
        "3.13",
        "The dispenser's bin is full: no dose can be taken back and no sachet discarded.",
        condition=True,
        cleared_meaning="The dispenser's bin has room again.",
        deviation=_D.DISPENSING_STOPPED,
    ),
    AlertSpec(
        "fault_jam",
        _P.HIGH,
        "3.14",
        "The roll is stuck in the dispenser; dispensing stopped.",
        condition=True,
        cleared_meaning="The roll is no longer stuck.",
        deviation=_D.DISPENSING_STOPPED,
    ),
    AlertSpec(
        "fault_reader",
        _P.HIGH,
        "3.16",
        "The dispenser cannot read sachets; dispensing stopped.",
        condition=True,
        cleared_meaning="The sachet reader works again.",
        deviation=_D.DISPENSING_STOPPED,
    ),
    AlertSpec(
        "fault_sensor",
        _P.HIGH,
        "3.4",
        "A dispenser sensor failed; dispensing stopped.",
        condition=True,
        cleared_meaning="The sensor fault is gone.",
        deviation=_D.DISPENSING_STOPPED,
    ),
    AlertSpec(
        "fault_cutter",
        _P.HIGH,
        "3.4",
        "The dispenser's sachet cutter failed; dispensing stopped.",
        condition=True,
        cleared_meaning="The cutter fault is gone.",
        deviation=_D.DISPENSING_STOPPED,
    ),
    AlertSpec(
        "battery_empty",
        _P.HIGH,
        "3.17",
        "The dispenser's battery is empty; the dispenser switched off.",
        condition=True,
        cleared_meaning="The dispenser's battery has charge again.",
        deviation=_D.DISPENSING_STOPPED,
    ),
    AlertSpec(
        "battery_low",
        _P.LOW,
        "3.27",
        "The dispenser's battery is running low.",
        condition=True,
        cleared_meaning="The dispenser's battery is no longer low.",
    ),
    AlertSpec(
        "clock_untrusted",
        _P.HIGH,
        "3.4",
        "The unit's clock cannot be trusted: no doses are dispensed and occurred_at may be wrong.",
        condition=True,
        cleared_meaning="The unit's clock is trusted again (time_trust says from what).",
        deviation=_D.DISPENSING_STOPPED,
    ),
    AlertSpec(
        "state_unreadable",
        _P.HIGH,
        "3.4",
        "The unit's stored state could not be read or contradicted itself (data.reason says "
        "where; data.binding: kept, none or unreadable). It started from what it could read, "
        "locked the dispenser and gives no dose until a person acknowledges this alert.",
        latched=True,
        deviation=_D.DISPENSING_STOPPED,
    ),
    # people and the unit
    AlertSpec(
        "help_requested",
        _P.MEDIUM,
        None,
        "The patient pressed the help button (rate limited).",
        chatty=True,
    ),
    AlertSpec(
        "panel_help_requested",
        _P.MEDIUM,
        # no VKP code means a help call; 3 (deviation when using a dispenser) is the nearest: the
        # patient asked the unit for a dose or for help when none could be given
        "3",
        "The patient pressed the unit's own take now / help button when no dose could be given "
        "(data.reason: no_dose_due with data.next_due_utc, clock_untrusted, no_schedule, "
        "not_bound, paused); call the patient (rate limited).",
        chatty=True,
    ),
    AlertSpec(
        "button_pressed",
        _P.INFO,
        None,
        "A button was pressed that did not start a dose (data.button: take, or panel for the "
        "unit's own take now / help button; rate limited); data.reason says why a TAKE inside "
        "the early window did not (min_interval, with not_before_utc, or tray_occupied).",
        chatty=True,
    ),
    AlertSpec(
        "alert_acknowledged",
        _P.INFO,
        None,
        "A person acknowledged a latched alert, named by alert_id (acknowledged is not resolved).",
    ),
    AlertSpec(
        "alert_silenced",
        _P.INFO,
        None,
        "Local sound and light were silenced for a while (seconds in data); no alert is cleared.",
    ),
    AlertSpec(
        "clock_jumped",
        _P.INFO,
        None,
        "The wall clock stepped (size in data); schedules follow the new time.",
    ),
    AlertSpec(
        "pause_started",
        _P.INFO,
        None,
        "A temporary stop was set (window in data): no doses and no missed-dose alerts in it.",
    ),
    AlertSpec(
        "pause_reminder",
        _P.LOW,
        None,
        "An open-ended temporary stop is still in force (sent every reminder interval; days "
        "so far, when it becomes overdue, and what resuming now needs in data).",
    ),
    AlertSpec(
        "pause_ending",
        _P.LOW,
        None,
        "A temporary stop ends soon (end in data) and what the resume needs: sachets to discard, "
        "bin room, action (see backlog_needs_nurse).",
    ),
    AlertSpec(
        "pause_overdue",
        _P.HIGH,
        None,
        "The unit has been paused longer than the maximum (since, max_days in data): is the "
        "patient home without doses? Resume, or end the service.",
        condition=True,
        cleared_meaning="No pause is in force any more.",
        deviation=_D.PAUSE_OVERRUN,
    ),
    AlertSpec(
        "travel_dispensed",
        _P.INFO,
        None,
        "Every sachet of a travel pause was dispensed to take along (counts in data; each "
        "slot has its dispensed_for_travel outcome).",
    ),
    AlertSpec(
        "travel_short",
        _P.MEDIUM,
        "3.15",
        "Not every sachet of a travel pause could be dispensed to take along (planned, "
        "dispensed and the reason in data): the patient lacks doses for the trip.",
        deviation=_D.MEDICATION_MISSING,
    ),
    AlertSpec(
        "pause_ended",
        _P.INFO,
        None,
        "A resume command ended a temporary stop (data.end_utc: when), or cancelled one not "
        "yet begun (data.cancelled true; start_utc and end_utc as planned); data.ended_at is "
        "when the command took effect. Doses are given again.",
    ),
    AlertSpec(
        "schedule_changed",
        _P.INFO,
        None,
        "A new schedule version is in effect (version in data).",
    ),
    AlertSpec(
        "binding_changed",
        _P.INFO,
        None,
        "The unit was bound to a patient or unbound (data.bound; never the patient reference).",
    ),
    AlertSpec(
        "dispenser_command_failed",
        _P.LOW,
        None,
        "The dispenser refused a command from the agent (command and result in data).",
    ),
    AlertSpec(
        "phantom_dispenser_event",
        _P.MEDIUM,
        None,
        "The dispenser reported a dose presented, taken or retained that matches no dose the "
        "agent commanded (unknown dispense id, or another sachet than the one dispensed); it "
        "changed nothing the agent believes is in the tray (message, ids and reason in data; "
        "rate limited).",
        chatty=True,
    ),
    AlertSpec(
        "dose_event_repeated",
        _P.INFO,
        None,
        "The dispenser reported again a dose event the agent already has (a retransmission "
        "after a lost acknowledgement, or a repeat): a DoseTaken of a dose already out of the "
        "tray, a DoseRetained of a dose already back in the bin or a sachet already discarded "
        "(no slot), or a DosePresented of a dose it heard of already (presented, taken or back in "
        "the bin). Recorded; "
        "no second intake, no second place in the bin, no dose believed in the tray, nothing "
        "changes (message, ids and slot in data).",
    ),
    AlertSpec(
        "failsafe_lock_lifted",
        _P.INFO,
        None,
        "The dispenser was found locked showing FAULT, a lock this agent process did not set: "
        "the fail-safe of an earlier one after a store fault (only the agent locks, SPEC 4.5). "
        "With its state read back the agent lifts it (unless it wants the cassette locked) "
        "and doses are given again; a store that fails again locks it again before any dose.",
    ),
    AlertSpec(
        "dispense_id_conflict",
        _P.HIGH,
        "3.4",
        "The dispenser says it already executed a dispense id this unit never had executed "
        "(it remembers ids from elsewhere: moved from another unit, or the unit's store was "
        "replaced); nothing was cut and that dose was not given. A technician resets the "
        "dispenser.",
        condition=True,
        cleared_meaning="The dispenser accepted a fresh dispense id again.",
        deviation=_D.DISPENSING_STOPPED,
    ),
    AlertSpec(
        "unexpected_dispenser_event",
        _P.LOW,
        None,
        "The dispenser reported something the agent did not expect (message in data).",
    ),
)

# --- emitted by the shell (agent/daemon.py, agent/commands.py), not by the engine -------------
# Listed here so that the catalogue stays the one list of every event kind the unit sends.
_SHELL_SPECS = (
    AlertSpec(
        "agent_started",
        _P.INFO,
        None,
        "The agent started (agent_version and boot counter in data).",
    ),
    AlertSpec(
        "dispenser_clock_invalid",
        _P.LOW,
        None,
        "The dispenser says its clock is valid but reports no time (data.rtc_utc_s, e.g. all "
        "ones from erased memory): it is ignored, never taken as the unit's time, and set from "
        "the unit's time once that is synchronised.",
    ),
    AlertSpec(
        "command_rejected",
        _P.LOW,
        None,
        "A command was refused or could not be read (data: command_id and name, each null when "
        "unreadable, status, code, message); also answered on commands/response when its "
        "command_id could be read. Code malformed_json (not UTF-8 JSON: no id to answer) only "
        "ever appears here.",
    ),
    AlertSpec(
        "adherence_summary",
        _P.INFO,
        None,
        "The adherence-and-deviation summary of a local day (data.period day, data.label "
        "YYYY-MM-DD; made at 04:00 local the next morning) or month (period month, label "
        "YYYY-MM; after the last day's): doses planned, given, taken, late, missed, refused, "
        "adherence, deviations by category and the deviations themselves (at most 200 listed; "
        "data.deviations_not_listed counts the rest). Days missed while the unit was off are "
        "made up, at most 31 days back.",
    ),
    AlertSpec(
        "binding_mismatch",
        _P.HIGH,
        "3.4",
        "At start the config names another patient than the one the unit is bound to (a typo, "
        "or another patient's config): the unit unbinds and dispenses nothing until a technician "
        "runs `dispenser-agent rebind` or `reset --termination` on site (data.reason; never a "
        "patient reference).",
        deviation=_D.DISPENSING_STOPPED,
    ),
    AlertSpec(
        "schedule_edit_ignored",
        _P.MEDIUM,
        None,
        "The config's schedule differs from the one in effect but its version was not raised: "
        "the edit is not applied (data.config_version, data.version_in_effect); the schedule "
        "in effect stays. Raise the version, or send update_schedule.",
    ),
    AlertSpec(
        "unit_unbound",
        _P.INFO,
        None,
        "End of service: a technician reset the unit on site (`reset --termination`). Every "
        "trace of the patient is being removed; no event about this patient follows "
        "(data.reason end_of_service, data.by the technician's id).",
    ),
    AlertSpec(
        "command_unauthenticated",
        _P.MEDIUM,
        None,  # a security event, not a dosing deviation
        "A command was refused because it could not be trusted (data.code: unsigned, "
        "bad_signature, unknown_key, wrong_unit, issued_in_future or replayed; data: "
        "command_id, name, key_id, message). Someone may be sending commands in the centre's "
        "name: check the broker. Nothing was executed.",
    ),
    AlertSpec(
        "centre_keys_changed",
        _P.INFO,
        None,
        "A signed rotate_centre_keys command changed the response-centre keys the unit trusts "
        "(data: added and retired key ids, and the key ids trusted now).",
    ),
    AlertSpec(
        "pause_open_ended",
        _P.MEDIUM,
        "3",
        "A temporary stop without an end was accepted (data.pause_id, start_utc): no dose is "
        "given until a resume command. Check it is meant (pause_reminder follows while it lasts).",
    ),
    AlertSpec(
        "mqtt_inbound_dropped",
        _P.LOW,
        None,
        "The unit received more MQTT messages than it could handle and dropped some (data.count "
        "since the last such event, data.topic of the last one; at most one a minute): a flood on "
        "its topics. A dropped command is not acknowledged, so the broker delivers it again.",
    ),
    AlertSpec(
        "event_unreadable",
        _P.MEDIUM,
        None,  # the unit's own storage, not a dosing deviation
        "An event the unit stored can no longer be read or does not fit this contract (storage "
        "corruption, or a bug): it is sent in its place, with its seq, so the events behind it "
        "are not held back. data.stored_kind, data.stored (its stored text, cut at 1,000 "
        "characters), data.stored_occurred_at and data.error say what was found. Ask the "
        "technician to check the unit's storage; if stored_kind is a dose outcome, confirm the "
        "dose with the patient.",
    ),
    AlertSpec(
        "commands_refused_in_bulk",
        _P.MEDIUM,
        None,  # a security event, not a dosing deviation
        "Many commands were refused in one window (a flood, or a broken sender): the first few "
        "of the window were answered and reported one by one as command_rejected or "
        "command_unauthenticated; the rest got no answer, were not executed, and are counted "
        "here (data.counts by reason: rate_limited, malformed_json, invalid_command, "
        "unknown_command, unsigned, unknown_key, bad_signature, wrong_unit (unsigned or not "
        "verified); data.total, window_s, "
        "individually_reported, first_at, last_at, example_command_id). At most one per window. "
        "A genuine command counted as rate_limited was not carried out: send it again.",
    ),
    AlertSpec(
        "audit_checkpoint",
        _P.INFO,
        None,  # the unit's own records, not a dosing deviation
        "The unit pruned the oldest records of its hash-chained audit log (retention, or the "
        "disk ceiling) behind a checkpoint record. Keep this event: it is the anchor that makes "
        "the unit's remaining log verifiable from outside the unit (data: first_seq, "
        "through_seq and through_hash of the last pruned record, records pruned, "
        "checkpoint_seq and checkpoint_hash of the checkpoint record). An auditor holding these "
        "can tell a log rewritten whole on the unit: its checkpoint record must have that hash "
        "(`dispenser-agent audit verify` checks the rest of the chain from it).",
    ),
    AlertSpec(
        "store_ceiling",
        _P.MEDIUM,
        None,  # the unit's own storage, not a dosing deviation
        "The unit's store reached its disk ceiling (a long time offline, or a flood): it made "
        "room by removing delivered events, then undelivered events of droppable kinds (button "
        "presses, lid open/close; data.undelivered_dropped counts them by kind: their seqs are a "
        "gap), then the oldest audit records behind a checkpoint. Dose outcomes and alarms are "
        "never removed. Once per crossing (data: used_bytes, ceiling_bytes, what was removed).",
    ),
    AlertSpec(
        "schedule_empty",
        _P.HIGH,
        "3.8",
        "An accepted schedule has no dose time at all (data.version): the unit gives no dose "
        "until a schedule with doses comes. Check it is meant.",
    ),
)
SHELL_KINDS = frozenset(s.kind for s in _SHELL_SPECS)


def _build_catalogue(specs: tuple[AlertSpec, ...]) -> Mapping[str, AlertSpec]:
    """Refuse a kind listed twice, or listed by hand as the `_cleared` form of a condition."""
    catalogue = {entry.kind: entry for entry in specs}
    if len(catalogue) != len(specs):
        raise ValueError("an event kind is listed twice in the catalogue")
    conditions = {entry.kind for entry in specs if entry.condition}
    for kind in catalogue:
        if kind.endswith(CLEARED_SUFFIX) and kind.removesuffix(CLEARED_SUFFIX) in conditions:
            raise ValueError(f"{kind} is generated from its condition; do not list it")
    return MappingProxyType(catalogue)


CATALOGUE: Mapping[str, AlertSpec] = _build_catalogue((*_ENGINE_SPECS, *_SHELL_SPECS))

# Outcome of a slot -> (priority, VKP code); a dose not given because the roll was empty is 3.7.
MISSED_VKP = "3.3"
EMPTY_VKP = "3.7"


def spec(kind: str) -> AlertSpec:
    try:
        return CATALOGUE[kind]
    except KeyError:
        raise KeyError(f"event kind {kind!r} is not in the catalogue") from None


def _condition_cleared(kind: str) -> AlertSpec | None:
    """The condition whose clearing `kind` announces, if `kind` is `<condition>_cleared`."""
    if not kind.endswith(CLEARED_SUFFIX):
        return None
    base = CATALOGUE.get(kind.removesuffix(CLEARED_SUFFIX))
    return base if base is not None and base.condition else None


def deviation_of(kind: str, fields: Mapping[str, object]) -> Deviation | None:
    """The deviation category of an event of `kind` with these fields, or None."""
    if kind == "slot_outcome":
        return slot_outcome_deviation(fields.get("outcome"), fields.get("reason"))
    entry = CATALOGUE.get(kind)
    return None if entry is None else entry.deviation


def raises_latched_alert(kind: str) -> bool:
    """An event of `kind` with an alert_id raises that alert (a latched kind, or a slot_outcome
    of a dose not given), rather than naming one raised before (an acknowledgement, a clear)."""
    entry = CATALOGUE.get(kind)
    return kind == "slot_outcome" or (entry is not None and entry.latched)


def documented_deviations() -> dict[str, str]:
    """Every documented kind -> its deviation category as the guide shows it ("" for none)."""
    shown: dict[str, str] = {}
    for entry in CATALOGUE.values():
        shown[entry.kind] = (
            SLOT_OUTCOME_RULE if entry.kind == "slot_outcome" else (entry.deviation or "")
        )
        if entry.condition:
            shown[entry.kind + CLEARED_SUFFIX] = ""
    return shown


def documented_kinds() -> dict[str, str]:
    """Every kind `make_event` accepts -> its one-line meaning, each condition followed by its
    `<kind>_cleared` (the contract's EVENT_KINDS)."""
    kinds: dict[str, str] = {}
    for entry in CATALOGUE.values():
        kinds[entry.kind] = entry.meaning
        if entry.condition:
            kinds[entry.kind + CLEARED_SUFFIX] = entry.cleared_meaning
    return kinds


def make_event(
    kind: str,
    fields: dict[str, object] | None = None,
    *,
    alert_id: str | None = None,
    priority: Priority | None = None,
    vkp_code: str | None = None,
) -> EngineEvent:
    """An event of a catalogued kind (`<kind>_cleared` for a condition is INFO, no VKP code).

    Only an event that is itself a VKP alert carries a code: a clearing, an acknowledgement or a
    decision has none, so a forwarder that files one alert per code files no second one. An event
    whose data names the latched alert it concerns (`alert_id`) carries it in the envelope too.
    An unknown kind raises KeyError: an event the centre has no documentation for is a bug.
    A deviation carries its category as `deviation` in its fields (data.deviation on the wire).
    """
    data = dict(fields or {})
    if alert_id is None and isinstance(data.get("alert_id"), str):
        alert_id = str(data["alert_id"])
    if _condition_cleared(kind) is not None:
        return EngineEvent(kind, Priority.INFO, None, data, alert_id)
    entry = spec(kind)
    data = dict(fields or {})
    deviation = deviation_of(kind, data)
    if deviation is not None:
        data["deviation"] = deviation.value
    return EngineEvent(
        kind,
        priority or entry.priority,
        vkp_code if vkp_code is not None else entry.vkp_code,
        data,
        alert_id,
    )
