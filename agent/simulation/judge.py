"""An independent judge of a simulated run: what should have happened, from the rules alone.

The judge does not import the dose engine or its schedule code. It has its own small reference of
the dose rules (`reference_slots`, on `zoneinfo`, written from docs/time-policy.md) and it sees
only what a person in the room and the response centre could see:

- the physical world, in *true* time (the patient's watch): which sachet the dispenser cut into
  the tray (its printed label: patient, roll, intended time), which one the patient took (or
  someone packed for a trip), which ones were cut straight into the bin, how full the bin is,
  which roll is loaded, which faults the hardware has, whether the agent is running and connected
  to the dispenser, the pauses in force (and which are trips with sachets to take along);
- the published event stream: kind, priority and fields of every event, in order.

Rules (each a named check; a violation names the rule, the seed and the true time):

R1 one sachet per slot: at most one sachet is presented for a slot, whether the slot is the one a
   published `dose_presented` event names or the one the sachet's label is packed for.
R2 minimum interval: no two intakes (the patient lifted a dose out of the tray) closer than
   `min_intake_interval`, in true time. The simulation passes its own setting: the schedule's
   minimum interval from the simulation config, or when that leaves it to the default, the
   judge's own reference of the documented default (`reference_min_interval`: half the smallest
   spacing of the dose times, at most 12 h), never a value computed by engine code. Sachets
   lifted out to take along on a trip (travel pre-dispense) are not intakes: they come out one
   after another, and R4 judges them instead.
R3 one outcome per slot: every slot of the reference schedule due between installation and
   `expect_until` ends in exactly one published `slot_outcome` event; no slot gets two, and no
   outcome names a slot the schedule does not have. The outcome tells the truth about its slot:
   its `due_utc` and `due_local` are the slot's due instant, and a dose not given (any outcome
   but taken, skipped while paused, taken along on a trip, or taken unconfirmed) is a HIGH alarm
   latched for a person to acknowledge (it carries an alert id). Its `deviation` is the category
   the municipality records: refused -> dose_refused, taken unconfirmed -> dose_unconfirmed,
   missed -> dose_missed or dose_not_presented (dose_missed when the agent had said the dose
   was in the tray), none for a dose given, skipped or taken along.
R4 right sachet: every presented sachet carries the bound patient's reference (on the roll's
   leader and on the sachet), its roll has not expired at presentation (true time), and its
   intended time is within `sachet_time_tolerance` of the slot it was presented for and closer to
   that slot's due instant than to any other slot's (slots sharing one instant, which a DST gap can
   cause, cannot be told apart by time and count as one). A sachet packed for a trip must be
   packed for a slot inside a travel pause that asks for it, and its roll must not have expired
   by that slot's due time (when the patient will take it); the slot's own dose, presented when
   the agent's trusted clock showed no pause in force yet, is not packed for a trip.
R5 no discard without a decision: a sachet is cut into the bin only when a decision covers it.
   `discard_decisions` says which decisions count:
   - "stale": the slot the sachet is packed for (the reference slot within the tolerance of its
     intended time) already has a published `slot_outcome` (the default);
   - a person's decision in the world (`discard_decided`: the response centre or a technician
     on site said that this sachet, or every sachet of its roll that matches no slot, goes to
     the bin) covers a sachet that matches no slot of the schedule (a plan mismatch);
   - "no_slot": any sachet that matches no slot. Not a decision by default: discarding the
     pharmacy's medicine because the plan disagrees needs someone to decide it.
R6 bin: the bin's fill never exceeds its capacity; no sachet is cut into it while it is full (a
   discard the dispenser refused with BIN_FULL); and a discard never takes its last place, which
   is kept for a dose that must go back from the tray (a bin filled with discards, e.g. a resume
   after a long pause, leaves every later missed dose in the tray and every later stale sachet
   stuck at the reader).
R7 no missed alarm while paused: no `slot_outcome` with outcome "missed" for a slot due inside a
   pause window, nor published while a pause is in force (by the agent's trusted clock: one
   stepped back shows the pause's start late).
R8 HIGH conditions reported: every HIGH condition of the physical world is followed by a
   published HIGH event that reports it within `high_report_bound` of true time. The bound runs
   while the agent can know: from onset, or from when the agent is running and linked to the
   dispenser again (the simulation has no broker link to lose: what the agent publishes reaches
   the centre at once). A condition that ends before its bound is not a violation. Conditions and
   the events that report them:
   - "wrong_roll": a roll whose leader names another patient is loaded -> `wrong_roll`;
   - "jam": the cutter is jammed -> `fault_jam`;
   - "bin_full": the bin is full -> `fault_bin_full`;
   - "roll_empty": at a slot's due instant (not paused, not settled or presented early) the
     loaded roll has no sachet left -> a HIGH `slot_outcome` or `dose_held` (the dose waits
     for a roll) for that slot; the bound runs from when the agent's trusted clock shows the due
     instant (a wall clock stepped back shows it late: the agent cannot know it sooner); one
     published ahead of its due instant while the roll was already empty reports it too, unless
     a refill came since (an agent whose clock is untrusted cannot tell when the dose comes due);
   - "plan_mismatch": the sachet at the reader (this patient's, on a roll with this patient's
     leader) matches no slot of the schedule and no person's decision covers it -> a HIGH
     `plan_mismatch` naming that roll and sachet index.
   Each condition is a sub-rule ("R8.jam" ...) that can be enforced on its own.
   - "roll_unreadable": a roll whose leader names this patient but whose other fields cannot be
     read (an erased expiry, all ones on the wire) is loaded -> `roll_rejected` (a blank leader,
     which names nobody, is a "wrong_roll");
   - "sachet_unusable": the sachet at the reader of this patient's roll cannot be given whatever
     the slot: the reader cannot read it, its print carries no time, or it names another patient
     -> `fault_reader` or `sachet_rejected` (one naming that roll and sachet, when it names one);
   - "pause_overdue": the unit has been paused without a break (windows overlapping or end to
     start, the judge's own chain) for `pause_max` (the engine's setting, passed in) ->
     `pause_overdue`; the bound runs from when the agent's trusted clock shows the maximum
     reached, not while its clock is untrusted (it cannot tell how long the pause has lasted);
     and a `pause_overdue` published by a trusted clock while no pause in force has lasted
     `pause_max` (by the agent's clock) is a false alarm, a violation of it too;
   - "clock_untrusted": the agent runs with a wall clock it has no reason to trust (a boot
     without time sync and without the dispenser's RTC) -> `clock_untrusted`; its end (the
     clock synchronised) is owed a `clock_untrusted_cleared` (R12).
R9 no false missed alarm: no `slot_outcome` "missed", published while the agent runs and is
   linked to the dispenser (so it can ask whether the tray is empty), for a slot whose dose the
   agent published as presented (`dose_presented`) and the patient (or someone packing for a
   trip) lifted out of the tray before that outcome (e.g. while the agent restarted or its link
   was down, so its `DoseTaken` was lost).
R10 phantom dispenser events change nothing: a dose event (presented, taken, retained) that matches
   no dose the agent commanded (an unknown dispense id, or another sachet index than the dose in
   the tray; the simulation injects them, with values up to their type limits, and tells the
   judge) is reported by a `phantom_dispenser_event` within the bound, unless one was published
   less than `phantom_report_interval` before (the engine rate-limits the report), and it changes
   nothing the patient gets:
   - no other published event names a phantom dispense id (as presented, taken, retained ...);
   - no slot is settled "taken" for a dose the patient did not lift out of the tray;
   - no dose is refused or missed because the tray is occupied (reason `tray_occupied` or
     `previous_dose_in_tray`) when the tray has been physically empty, with the agent linked to
     the dispenser, from `high_report_bound` before the slot's due time until the outcome.
R11 the centre's commands take effect: what the unit accepts is confirmed at once: the first
   acknowledgement of an alert it published with an alert id by `alert_acknowledged` naming it, a
   silence by `alert_silenced`, a person's discard decision by `plan_mismatch_decided` naming the
   roll, a schedule update by `schedule_changed` with its version, a pause by `pause_started` and
   a resume by `pause_ended` naming the pause (the centre must be able to trust that what it did
   was done). A command the unit refuses (`centre_refused`) is owed nothing. A `pause_reminder`
   is only for an open-ended pause, and tells how long it has lasted (`days_in_force`, within
   0.05 day) and the longest it may (`max_days`: `pause_max`), so a person can end it in time.
   A command the rules refuse (`forbid`: a silence of no duration, a pause ending before it
   starts, in year 3000 or longer than `pause_max`, a schedule with a time twice, 13 doses a
   day, 24:00 or an older version, a decision on a roll never loaded, an acknowledgement of an
   alert never raised) is not taken: no event says it was.
R12 the centre's record of the medicine: every sachet the dispenser moves is reported within
   `record_bound` (15 min; running, like R8's, while the agent is linked): a presentation by
   `dose_presented` (its dispense id; or, cut unheard and gone before the agent could look, by
   the slot outcome naming that id), a sachet cut into the bin by `sachet_discarded` (its
   index), a dose taken back from the tray by `dose_retained` (its dispense id), a dose lifted
   out of the tray while the agent hears it by its `slot_outcome` taken (or taken_unconfirmed)
   or `dose_taken_late` (its dispense id), one packed for a trip by its `slot_outcome`
   dispensed_for_travel; and the end of a HIGH condition reported in its episode (jam, full
   bin, wrong roll) by `<event>_cleared`. A `dose_presented` or `slot_outcome` naming a dispense
   id the dispenser cut names the sachet that moved: its index (when the event has the field), and
   its roll when it names one. A `dose_left_in_tray` gives the reason a dose is left for a nurse
   (no retain bin, or the bin full), never none; a dose whose slot ends while it lies in the tray
   of a dispenser without RETAIN_BIN (SPEC 3: it stays there) is reported by `dose_stuck_in_tray`
   (or `dose_left_in_tray`, a pause) naming its dispense id with reason `no_retain_bin`, so a
   person comes to lift it out. A dose announced and still in the tray when
   R14's escalation comes (the agent linked all along) is reported by `dose_not_taken` naming
   its slot, and no `dose_not_taken` comes before that time (by more than a trusted clock's
   accuracy, `NOT_TAKEN_CLOCK_SLACK`: a restart re-times the step by the wall clock).

R13 a trip is told truthfully: a `travel_dispensed` or `travel_short` for a travel pause counts
   (`dispensed`) the sachets taken along for its slots (at least those taken while the agent
   could hear it, at most all of them), and `travel_dispensed` (the trip complete)
   only when one was taken along for each slot of the trip (the judge's own slots in its window):
   else the patient leaves without doses and the centre does not know. A trip is reported once.

R14 the dispenser tells and guards at home: what the patient meets at the unit follows the rules
   within `high_report_bound` (running, like R8's, while the agent is linked):
   - "signal": while a dose the agent announced (`dose_presented`) lies in the tray and its slot
     has no outcome yet, the dispenser shows a pattern that calls the patient (REMINDER, URGENT
     or FAULT), unless the centre silenced the unit (since the agent last started: it keeps a
     silence in memory only); with `escalate_after` (the engine's first escalation step, passed
     in), REMINDER until that long after the announcement and URGENT from then on, even once
     the agent restarted or lost the link since (it stores the step and keeps its time: a
     restart never calls the patient less urgently); only a restart with a clock the agent does
     not trust may delay a step not yet shown (then either until URGENT is shown, never less
     urgent after);
   - "quiet": the dispenser does not call (REMINDER, URGENT) with no such dose in the tray (a
     unit that keeps calling after the dose was taken teaches the patient to ignore it);
   - "held": while a due dose (by the agent's trusted clock) the agent said is held
     (`dose_held`) has no outcome and is not presented, and the tray is empty, the dispenser
     shows HELD (or FAULT), unless silenced; a dispenser without HELD_PATTERN refuses HELD, so
     FAULT (SPEC 3: the agent shows FAULT instead);
   - "panel": the unit's own held light (its panel, drivers/gpio_panel.py; judged while the
     agent runs) is on while such a held dose is due, a dose in the tray or not (a light, not a
     sound: no silence), and off while no dose the agent said is held lacks an outcome (an
     early TAKE may be answered "held" before the slot is due);
   - "lock": a roll whose leader does not name the patient (another's, or blank) is loaded, or
     the unit is locked down (R17) -> the cassette is locked (on a dispenser with a lock); else
     it is not locked (the patient's doses come);
   - "fault": while such a roll is loaded or the unit is locked down, the dispenser shows FAULT
     (unless the centre silenced it): a person must come;
   - "alarm": and FAULT only for a reason: such a roll or a lockdown, the dispenser's own silence
     alarm (SPEC 4.7), or on a dispenser without HELD_PATTERN a dose held (no outcome yet) or
     every dose held while the agent's clock is untrusted (a unit that alarms for nothing is
     soon ignored);
   - "gated": the agent sends a gated message only to a dispenser that announces its bit
     (SPEC 3, "What each bit obliges"): a command the dispenser answers UNSUPPORTED (HELD,
     SetLock, Discard, Retain, KeepAlive) is a violation at once.
   The mix gives some seeds such dispensers (agent.simulation.mix.REDUCED_MODELS: without
   HELD_PATTERN, without a lock, without a retain bin: mix.BINLESS).

R15 a dose is held back only for a reason that is true: a `dose_held` for `roll_period_passed`
   only when the leader of the roll at the reader says its last dose was more than
   `sachet_time_tolerance` ago by the agent's trusted clock (ahead of true time while a wall
   step is not corrected; `HELD_CLOCK_SLACK` more allowed); a claim that stands for
   `high_report_bound` (the slot neither presented nor held for another reason) is the
   violation: at a link's return the agent may speak of the roll it knew for a moment. A
   `sachet_rejected` names a sachet that truly cannot be given: its print unreadable or without
   a time, or naming another patient (the judge's record of every sachet the reader showed; a
   sachet it never saw is not judged).

R16 a dose is given when nothing stops it: from a slot's due instant (by the agent's trusted
   clock) until `dose_window` after it (the engine's undispensed deadline, passed in), once
   nothing in the world stops its dose for `dose_bound`, a sachet is cut into the tray for it
   (or the agent says one was: `dose_presented`). The judge's own reference of what stops a dose
   (`Judge.dose_stop`, each a fact of the world, never the engine's reason): the agent not
   running or not linked to the dispenser; its clock untrusted or not yet showing the due
   instant; a pause covering the due instant or in force; no roll, a roll not naming the
   patient (or whose leader cannot be read), expired (`roll_expired_margin` before its expiry)
   or past its period by the agent's clock (`HELD_CLOCK_SLACK` allowed); no sachet at the
   reader, or one not for this slot (unreadable, without a time, another patient's, packed for
   an earlier or a later slot or for none); a dispenser fault (a jam ...), a full bin, its lid
   open or a locked cassette; a dose in the tray; an earlier slot still open whose dose is not
   given (doses are given in order); the minimum interval since the last intake not passed
   (counted from when the agent could hear of it, on its clock). A slot presented early
   (TAKE), given an outcome, or dropped by a schedule update is owed nothing more.

   A slot whose dose was not given ends (a `slot_outcome` missed or refused) only once its
   window has passed by the agent's trusted clock: a stop that ends inside the window (a lid
   closed, a roll put in) still lets the dose come.

R17 a damaged stored state: a restart that finds its stored state damaged (`state_damaged`: the
   world damaged a field; the binding reads or not) is reported by a HIGH `state_unreadable`
   with an alert id (latched) saying the binding as it is, within `high_report_bound`; until a
   person acknowledges that alert (an acknowledgement the unit refuses does not count) nothing
   is cut (no dose presented, no sachet discarded), the cassette is locked and the dispenser
   shows FAULT (R14), and R16 owes no dose. A `state_unreadable` with nothing damaged is a
   violation too. What the report must say of the binding is the world's truth (which fields
   it damaged), never what the agent's restore made of them; with the binding lost no dose is
   owed until a person binds the unit again (`bound`).

R18 a decided sachet goes to the bin: while the sachet at the reader is this patient's (leader
   and print), readable with a time, for no slot of the schedule, and a person's decision covers
   it (`discard_decided`), it is cut into the bin within `high_report_bound` once nothing stops a
   discard (`Judge.discard_stop`, the judge's own reference of the world's facts: the agent not
   linked, its clock untrusted or the unit locked down; a pause in force; a roll leader that
   cannot be read; a dispenser fault, a full bin, its lid open, the cassette locked, a dose in the
   tray, no bin, or fewer than two free places in it: R6 keeps the last for a dose from the
   tray). Else every dose behind it is refused for a sachet nobody will be given.

R19 the national code of a dose not handed over: published with its VKP code (`vkp_code`), a
   `slot_outcome` missed or refused carries 3.3 ("no confirmation that the dose was handed over
   at the planned time") or 3.7 ("not handed over because the dispenser was empty"), a HIGH
   `dose_held` 3.7, and a dose given, skipped while paused or taken along none (the judge's own
   table, from the national one in shared/vkp-dispenser-alert-codes.md, not the engine's catalogue).

R20 no alarm flood: `lid_open`, `button_pressed`, `help_requested` and `panel_help_requested`
   at most once per `chatty_interval` each (the engine's setting, passed in), counted since the
   agent last started (it keeps when it last told one in memory only); and a HELP the patient
   presses while the agent is linked is told (`help_requested`, at once) unless one was told
   less than the interval before (`help_pressed`: a call for help is never lost). A press of
   the unit's own panel button (`panel_pressed`, docs/engine.md: the dispenser's TAKE when a dose
   is within reach, else a help call) is never silently lost either: while the agent is linked it
   is answered at once (`panel_help_requested`, `button_pressed`, or the dose it reached:
   `dose_presented`, `dose_held`, `slot_outcome`) unless a `panel_help_requested` or a
   `button_pressed` was told less than the interval before. A `panel_help_requested` says
   truly why no dose was within reach (docs/engine.md's reasons): `clock_untrusted` only while
   the agent's clock is untrusted (and then never `paused` or `no_dose_due`: it cannot tell);
   `paused` with the next dose (the judge's own next slot) inside a pause; `no_dose_due` with
   the next dose it names (`next_due_utc`) outside any pause and further off than
   `early_window` (the engine's setting, passed in); and none while the dose the agent
   announced lies in the tray or a slot is due without an outcome (a TAKE reaches it);
   `not_bound` only while the unit is unbound and `no_schedule` never (the centre's schedule is
   there). A `button_pressed` from the panel
   (the press taken as TAKE) only with a dose within reach: in the tray, or a slot due or within
   `early_window` with no outcome yet.

R21 the battery at its thresholds: `battery_low` is raised once the dispenser's battery is at
   or below 20 % and cleared (`battery_low_cleared`) once it is back at or above 25 %;
   `battery_empty` at or below 3 %, cleared at or above 5 % (docs/engine.md's table of
   technical conditions, the judge's own `BATTERY_LEVELS`). Between the two levels nothing
   changes (hysteresis). Each is raised once and cleared once: a raise or a clear with the
   battery (as the world has it now) outside its documented level, a second raise or a clear of
   a condition not raised is a violation; one owed by the level is published within
   `high_report_bound` (running, like R8's, while the agent is linked to the dispenser).

R22 few doses left: `low_supply` (LOW, VKP 3.25) tells the truth about the loaded roll of the
   patient that doses may be given from (its leader readable, not expired nor past its period:
   a roll refused is not judged; docs/engine.md, supply conditions: "remaining ≤ threshold",
   cleared by "a fuller roll", or once the roll is empty: the catalogue's meaning): while such a
   roll has at least
   one and at most `low_supply_threshold` sachets left (the engine's setting, passed in) it is
   raised within `high_report_bound` (running, like R8's, while the agent is linked); it is not
   raised while the roll has more left or none (unless the dispenser just sent a `LowSupply`
   that names no roll: `low_supply_phantom`, its word is passed on), and not cleared while the
   roll still has few left.

R23 a refusal is told: every Dispense, Discard or Retain the dispenser refuses (a result other
   than OK, ALREADY_DONE and BUSY, which the agent retries; `dispenser_refused`) is told at once
   by a `dispenser_command_failed` naming the command and the result (the catalogue: "the
   dispenser refused a command"), and none names a result that is no refusal (ok,
   already_done).

R24 a dose event sent again changes nothing: when the dispenser sends again its report of a dose
   presented, taken or taken back that the agent heard before (a retransmission after a lost
   ACK, a stale report from the firmware; the simulation sends them and tells the judge what the
   agent answered), the answer publishes none of `dose_presented`, `slot_outcome`,
   `dose_taken_late`, `dose_retained`, `sachet_discarded`, `unexpected_dispenser_event` (each
   says something new happened to a dose) and sends the dispenser no Dispense, Discard or Retain.
   The physical consequences of a repeat taken as new are judged by the other rules (R2: a second
   intake; R6: a second place in the bin; R16: a dose held behind a tray that is empty).

The schedule may change during a run (`schedule_changed`, when the response centre's update
reaches the unit): slots of the new rules due from then on are expected; slots only the new rules
have that were due before it, and slots only the old ones have that are due after it, may get an
outcome but need not.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

from agent.simulation.violation import InvariantViolation

RULES: dict[str, str] = {
    "R1": "at most one sachet presented per slot",
    "R2": "no two intakes closer than the minimum interval",
    "R3": "every slot ends in exactly one published outcome",
    "R4": "only the patient's sachet, unexpired, packed for the slot it is given for",
    "R5": "no discard without a decision",
    "R6": "the bin never overflows (nor is filled by discards)",
    "R7": "no missed-dose alarm while paused",
    "R8": "every HIGH condition reported within the bound",
    "R9": "no missed alarm for a presented dose the patient took",
    "R10": "phantom dispenser events are reported and change nothing",
    "R11": "the centre's commands are confirmed",
    "R12": "every movement of medicine and every end of a HIGH condition is reported",
    "R13": "a trip's report counts the sachets taken along and is complete only if they all were",
    "R14": "the dispenser shows the patient a dose in the tray or held, and locks another's roll",
    "R15": "a dose is held back only for a reason that is true",
    "R16": "a dose is given when nothing stops it",
    "R17": "a damaged stored state is reported and locks the unit down until a person decides",
    "R18": "a sachet a person decided to discard goes to the bin when nothing stops it",
    "R19": "a dose not given carries the national code of why (VKP 3.3, or 3.7: empty)",
    "R20": "no alarm flood: a chatty event at most once per interval",
    "R21": "the battery conditions are raised and cleared at their documented levels",
    "R22": "few doses left is raised and cleared as the roll has them",
    "R23": "a command the dispenser refused is told, and only a refused one",
    "R24": "a dose event the dispenser sends again changes nothing",
}
HIGH_CONDITIONS = (
    "wrong_roll",
    "jam",
    "bin_full",
    "roll_empty",
    "plan_mismatch",
    "roll_unreadable",
    "sachet_unusable",
    "pause_overdue",
    "clock_untrusted",
)
# R8 is enforced as a whole ("R8") or per condition ("R8.jam"); its findings are per condition
# R22 likewise: "R22.level" (raised and cleared as the roll has few left) and "R22.empty" (not
# raised again once the roll is empty)
SUB_RULES = frozenset(f"R8.{name}" for name in HIGH_CONDITIONS) | {"R22.level", "R22.empty"}
ALL_RULES = frozenset(RULES)
# The rules the engine keeps today: what a run enforces by default. Each rule left out fires on
# known engine hazards (SAFETY.md) and has a strict xfail test in tests/test_simulation.py that
# fails the day the engine is fixed; the rule then moves in here.
HOLDING_RULES = frozenset(
    {
        "R1",
        "R2",
        "R3",
        "R4",
        "R5",
        "R6",
        "R7",
        "R8.wrong_roll",
        "R8.jam",
        "R8.bin_full",
        "R8.roll_empty",
        "R8.plan_mismatch",
        "R8.roll_unreadable",
        "R8.sachet_unusable",
        "R8.pause_overdue",
        "R8.clock_untrusted",
        "R9",
        "R10",
        "R11",
        "R12",
        "R13",
        "R14",
        "R15",
        "R16",
        "R17",
        "R18",
        "R19",
        "R20",
        "R21",
        "R22.level",
        "R22.empty",
        "R23",
        "R24",
    }
)
DISCARD_DECISIONS = frozenset({"stale", "no_slot"})
HIGH = "high"


# --- the reference schedule ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class RefSlot:
    """One dose on one local day, as the rules say it should be."""

    due_utc: datetime
    slot_id: str  # "YYYY-MM-DDTHH:MM": local date + nominal local time


def parse_hhmm(text: str) -> time:
    hours, sep, minutes = text.partition(":")
    if not sep or len(hours) != 2 or len(minutes) != 2:
        raise ValueError(f"dose time {text!r}: use HH:MM")
    return time(int(hours), int(minutes))


def reference_slots(
    zone: str, times: Sequence[str], effective_from: date, first_day: date, last_day: date
) -> list[RefSlot]:
    """The slots of local days `first_day`..`last_day` (inclusive), in due order (one rule)."""
    return reference_slots_for_rules(zone, [(effective_from, times)], first_day, last_day)


def reference_slots_for_rules(
    zone: str,
    rules: Sequence[tuple[date, Sequence[str]]],
    first_day: date,
    last_day: date,
) -> list[RefSlot]:
    """The slots of local days `first_day`..`last_day` (inclusive), in due order. Each rule
    (effective_from, times) applies from its date until the next rule's date.

    docs/time-policy.md: a nominal time on a day when the clock jumps over it is due at the
    instant the wall clock would have shown it without the jump (shifted forward by the gap); a
    time that happens twice is due at its first occurrence. With zoneinfo that is `fold=0` in both
    cases (a missing local time is converted with the offset in force before the gap). Then an
    earlier nominal time is never due after a later one: it takes the later one's instant.
    Slots are ordered by due instant, then by slot id. No slots before the first rule's date.
    """
    tz = ZoneInfo(zone)
    ordered = sorted((start, sorted(parse_hhmm(t) for t in times)) for start, times in rules)
    raw: list[tuple[str, datetime]] = []
    day = max(first_day, ordered[0][0]) if ordered else last_day + timedelta(days=1)
    while day <= last_day:
        nominal = [times for start, times in ordered if start <= day][-1]
        for t in nominal:
            local = datetime.combine(day, t, tzinfo=tz)  # fold=0
            raw.append((f"{day.isoformat()}T{t:%H:%M}", local.astimezone(UTC)))
        day += timedelta(days=1)
    slots: list[RefSlot] = []
    later: datetime | None = None
    for slot_id, due in reversed(raw):  # raw is in nominal order
        if later is not None and due > later:
            due = later
        later = due
        slots.append(RefSlot(due, slot_id))
    slots.sort()
    return slots


DEFAULT_MIN_INTERVAL_MAX = timedelta(hours=12)


def reference_min_interval(times: Sequence[str]) -> timedelta:
    """The default minimum interval of a daily schedule, as agent/engine/schedule.py documents
    it: half the smallest spacing between consecutive nominal dose times, across midnight too
    (one dose a day: 24 h apart), at most 12 h."""
    minutes = sorted({_clock_minutes(parse_hhmm(t)) for t in times})
    if not minutes:
        return DEFAULT_MIN_INTERVAL_MAX
    gaps = [later - earlier for earlier, later in pairwise(minutes)]
    gaps.append(24 * 60 - minutes[-1] + minutes[0])  # a day's last dose to the next day's first
    return min(timedelta(minutes=min(gaps)) / 2, DEFAULT_MIN_INTERVAL_MAX)


def reference_min_interval_of_rules(rules: Sequence[Sequence[str]]) -> timedelta:
    """The default minimum interval of a schedule whose rules (dose times, in the order they
    take effect) follow one another, as agent/engine/schedule.py documents it: half the smallest
    spacing between two doses of any rule, across midnight too, and across each change of rule
    (the last dose of the day before to the first of the new rule's first day), at most 12 h."""
    interval = DEFAULT_MIN_INTERVAL_MAX
    days = [sorted({_clock_minutes(parse_hhmm(t)) for t in times}) for times in rules]
    for times in rules:
        interval = min(interval, reference_min_interval(times))
    for before, after in pairwise(d for d in days if d):
        interval = min(interval, timedelta(minutes=24 * 60 - before[-1] + after[0]) / 2)
    return interval


def _knowable(c: _Condition, world: World) -> bool:
    """The agent can know of condition `c` now: it runs, linked to the dispenser, and for a
    pause's maximum its wall clock is trusted."""
    return world.agent_linked and (c.name != "pause_overdue" or world.clock_trusted)


def _clock_minutes(t: time) -> int:
    return t.hour * 60 + t.minute


# --- observations ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SachetLabel:
    """What is printed on a sachet and its roll's leader."""

    roll_id: str
    roll_patient_ref: str  # the roll's leader label ("": blank, names nobody)
    patient_ref: str  # printed on the sachet
    index: int
    intended_utc: datetime | None  # None: the print carries no time
    roll_expiry_utc: datetime | None  # None: the leader's expiry cannot be read (erased)
    readable: bool = True  # False: the dispenser's reader cannot read this sachet at all
    roll_last_dose_utc: datetime | None = None  # the leader's last dose time; None: not read

    @property
    def usable(self) -> bool:
        """Readable and printed with a time: a sachet some slot could be given."""
        return self.readable and self.intended_utc is not None


@dataclass(frozen=True, slots=True)
class World:
    """The physical state the HIGH conditions of R8 depend on, at one true instant."""

    roll_patient_ref: str | None  # the loaded roll's leader; None: no roll
    remaining: int  # sachets left on the loaded roll
    jammed: bool
    bin_full: bool
    agent_linked: bool  # the agent runs and is connected to the dispenser
    reader: SachetLabel | None = None  # the sachet at the reader of the loaded roll
    tray_occupied: bool = False  # a presented sachet lies in the tray
    roll_label_readable: bool = True  # the loaded roll's leader fields can be read (R8)
    # how far the agent's clock, while it has reason to trust it, shows less than true time (its
    # wall clock stepped back and not corrected yet): a slot falls due for it that much later
    clock_behind: timedelta = timedelta(0)
    # the agent has reason to trust its wall clock (synchronised, or set from the dispenser's
    # RTC); an untrusted one cannot tell how long a pause has lasted (R8.pause_overdue)
    clock_trusted: bool = True
    # R14: the pattern the dispenser shows (AlertPattern's name) and its cassette lock; None:
    # not observed (the rule is not judged)
    pattern: str | None = None
    locked: bool | None = None
    lock_supported: bool = True
    # R15: how far the agent's clock, while it has reason to trust it, shows more than true time
    # (its wall clock stepped ahead and not corrected yet): a roll's period passes that much sooner
    clock_ahead: timedelta = timedelta(0)
    # R16: the dispenser's active faults (FaultCode names: JAM, CUTTER, READER, BIN_FULL ...)
    faults: frozenset[str] = frozenset()
    lid_open: bool = False  # R16: the dispenser cuts nothing while its lid is open
    # R18: free places in the bin (None: not known) and whether the dispenser has one at all
    bin_room: int | None = None
    retain_bin: bool = True
    # R14: the dispenser shows AlertPattern.HELD (feature HELD_PATTERN; without it the agent
    # shows FAULT instead, SPEC 3), and its own silence alarm is on (it shows FAULT, SPEC 4.7)
    held_pattern: bool = True
    silence_alarm: bool = False
    # R14: the unit's own held light (its panel); None: not observed (the Pi is down)
    panel_held: bool | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    rule: str  # "R1" ... "R8", or "R8.<condition>"
    at: datetime  # true time
    message: str


@dataclass(frozen=True, slots=True)
class JudgeConfig:
    patient_ref: str
    zone: str
    times: tuple[str, ...]
    effective_from: date  # the schedule rule's first local day
    installed_utc: datetime  # no slot due before this is expected
    expect_until_utc: datetime  # every slot due before this must have its outcome at the end
    sachet_time_tolerance: timedelta  # the engine's setting, passed in (not imported)
    min_intake_interval: timedelta = timedelta(minutes=90)
    high_report_bound: timedelta = timedelta(minutes=10)
    # R12: the centre's record may lag a little more (a sachet cut for a trip while the agent
    # could not hear it is settled at the travel collect timeout, 10 min after it learns of it)
    record_bound: timedelta = timedelta(minutes=15)
    # R10: the engine reports phantom dispenser events at most this often (its setting, passed in)
    phantom_report_interval: timedelta = timedelta(minutes=10)
    # R20: a chatty event at most once per this interval (the engine's setting, passed in)
    chatty_interval: timedelta = timedelta(minutes=15)
    pause_max: timedelta = timedelta(days=30)  # R8.pause_overdue (the engine's setting, passed in)
    # R14: a dose in the tray calls REMINDER, then URGENT this long after it was announced (the
    # engine's escalation step, passed in); None: any calling pattern will do
    escalate_after: timedelta | None = None
    # R16: a dose nothing stops is cut within `dose_bound`, while its slot is open: until
    # `dose_window` after its due instant (the engine's undispensed deadline, passed in)
    dose_bound: timedelta = timedelta(minutes=2)
    dose_window: timedelta = timedelta(minutes=60)
    roll_expired_margin: timedelta = timedelta(0)  # R16: the engine's setting, passed in
    low_supply_threshold: int = 4  # R22: the engine's setting, passed in
    # R20: a TAKE reaches the next dose this long before its due time (the engine's setting,
    # passed in); None: a panel's "no_dose_due" is not judged against it
    early_window: timedelta | None = None
    discard_decisions: frozenset[str] = frozenset({"stale"})
    enforce: frozenset[str] = ALL_RULES  # rules that raise; the others are only recorded
    seed: int | None = None

    def __post_init__(self) -> None:
        unknown = (self.enforce - ALL_RULES - SUB_RULES) | (
            self.discard_decisions - DISCARD_DECISIONS
        )
        if unknown:
            raise ValueError(f"unknown rule or decision names: {sorted(unknown)}")


@dataclass(slots=True)
class _Presentation:
    dispense_id: int
    at: datetime
    label: SachetLabel
    label_slot: RefSlot | None
    agent_at: datetime | None = None  # what the agent's trusted clock showed (None: as `at`)


@dataclass(slots=True)
class _OwedDose:
    """R16: a due slot whose dose has not been cut yet."""

    slot: RefSlot
    free_since: datetime | None = None  # nothing has stopped it since then
    release: datetime | None = None  # the last stop found ends by itself then (a time)


@dataclass(slots=True)
class _Condition:
    name: str
    onset: datetime
    deadline: datetime | None  # None while the agent cannot know
    slot_id: str | None = None  # roll_empty: the slot it blocks
    # roll_empty: the true instant the agent's clock shows the slot's due instant
    agent_due: datetime | None = None
    reported: bool = False
    sachet: tuple[str, int] | None = None  # plan_mismatch, sachet_unusable: (roll id, index)
    rule: str = ""  # the rule a late report breaks; "": R8.<name>
    bound: timedelta | None = None  # None: high_report_bound
    # R12: reported by an event of one of these (kind, fields): each field has that value, or
    # one of the values of a tuple
    expect: tuple[tuple[str, dict[str, object]], ...] = ()
    what: str = ""  # the violation's text when set (R14)


_CONDITION_EVENTS = {
    "wrong_roll": ("wrong_roll",),
    "jam": ("fault_jam",),
    "bin_full": ("fault_bin_full",),
    "plan_mismatch": ("plan_mismatch",),
    "roll_unreadable": ("roll_rejected",),
    "sachet_unusable": ("fault_reader", "sachet_rejected"),
    "pause_overdue": ("pause_overdue",),
    "clock_untrusted": ("clock_untrusted",),
}
# R12: the event that reports a HIGH condition's end (the conditions R8 sees in the world)
_CLEARED_EVENTS = {
    "wrong_roll": "wrong_roll_cleared",
    "jam": "fault_jam_cleared",
    "bin_full": "fault_bin_full_cleared",
    "clock_untrusted": "clock_untrusted_cleared",
}
# roll_empty: the HIGH events that name the slot whose dose waits for a roll, or did not get it
_SLOT_EVENTS = ("slot_outcome", "dose_held")
PHANTOM = "phantom"  # R10's condition: a phantom dose event not yet reported
PHANTOM_REPORT = "phantom_dispenser_event"
# R24: events that say something new happened to a dose, and the commands that move a sachet
NEWS_OF_A_DOSE = frozenset(
    {
        "dose_presented",
        "slot_outcome",
        "dose_taken_late",
        "dose_retained",
        "sachet_discarded",
        "unexpected_dispenser_event",
    }
)
SACHET_COMMANDS = frozenset({"Dispense", "Discard", "Retain"})
INTAKES = ("taken", "taken_unconfirmed")  # outcomes of a slot whose dose was lifted out (R12)
# outcomes of a dose given, or not given for a reason a person already knows (R3: no alarm)
QUIET_OUTCOMES = ("taken", "skipped_paused", "dispensed_for_travel", "taken_unconfirmed")
# R3: the deviation category the municipality records for an outcome (docs: "Deviations");
# quiet outcomes are none. A missed dose that was in the tray is "dose_missed".
MISSED_IN_TRAY = "dose_missed"
_OUTCOME_DEVIATIONS: dict[str, tuple[str | None, ...]] = {
    "missed": (MISSED_IN_TRAY, "dose_not_presented"),
    "refused": ("dose_refused",),
    "taken_unconfirmed": ("dose_unconfirmed",),
}
# R15: how far ahead of true time the agent's clock may be (a wall-clock step not yet corrected)
HELD_CLOCK_SLACK = timedelta(minutes=10)
GIVE_UP_SLACK = timedelta(seconds=1)  # R16: a slot ends at its window's end, not before
# R12: how far a trusted wall clock (synchronised, or set from the dispenser's RTC in whole
# seconds) may be from true time: a restart re-times a dose's escalation from the presentation's
# stored wall time, so its `dose_not_taken` may come that much before true time says (the World
# too compares the agent's clock with true time in whole seconds)
NOT_TAKEN_CLOCK_SLACK = timedelta(seconds=1)
_LOCAL_KEYS = {
    name: f"R14 {name}" for name in ("signal", "quiet", "held", "panel", "lock", "fault", "alarm")
}
# R19: the national alert codes (VKP, shared/vkp-dispenser-alert-codes.md) of a dose not handed
# over: 3.3 "no confirmation that the dose was handed over at the planned time", 3.7 "not handed
# over at the planned time because the dispenser was empty"; a dose given, skipped or taken
# along is no alert
VKP_NOT_HANDED_OVER = ("3.3", "3.7")
VKP_EMPTY = "3.7"
VKP_NOT_SHOWN = "not shown"  # published() was not shown the event's code: R19 is not judged
# R20: what people do at the unit (the lid, the buttons), reported at most once per interval
# (docs/engine.md: chatty inputs); a restart forgets when it last reported one (not stored)
CHATTY_EVENTS = frozenset({"lid_open", "help_requested", "panel_help_requested", "button_pressed"})
CHATTY_SLACK = timedelta(seconds=1)
# R20: why a press of the unit's panel button reached no dose (docs/engine.md, PanelPress)
PANEL_REASONS = ("no_dose_due", "paused", "clock_untrusted", "no_schedule", "not_bound")
# R20: what answers a press of the unit's panel button (docs/engine.md, PanelPress)
PANEL_ANSWERS = frozenset(
    {"panel_help_requested", "button_pressed", "dose_presented", "dose_held", "slot_outcome"}
)
# R21: the battery conditions (docs/engine.md, technical conditions): raised at or below the
# first level (per cent), cleared at or above the second
BATTERY_LEVELS: dict[str, tuple[int, int]] = {"battery_low": (20, 25), "battery_empty": (3, 5)}
BATTERY_EVENTS = frozenset((*BATTERY_LEVELS, *(f"{name}_cleared" for name in BATTERY_LEVELS)))
# R17: the key of the owed state_unreadable report
_DAMAGE_KEY = "R17 state_unreadable"
# why a dose is left in the tray (docs/engine.md): the dispenser has no bin, or it is full
LEFT_IN_TRAY_REASONS = ("no_retain_bin", "bin_full")
# R11: a pause reminder's days in force, rounded to 0.01 day on the agent's clock
REMINDER_DAYS_SLACK = 0.05
# R10: reasons of an outcome that say the tray was occupied (docs/engine.md, reason tokens)
TRAY_REASONS = ("tray_occupied", "previous_dose_in_tray")


@dataclass(slots=True)
class Judge:
    """Feed it observations in true-time order; it raises `InvariantViolation` for a violation of
    an enforced rule and records every violation in `findings`."""

    config: JudgeConfig
    findings: list[Finding] = field(default_factory=list)
    _slots: list[RefSlot] = field(default_factory=list)
    _dues: list[datetime] = field(default_factory=list)
    _by_id: dict[str, RefSlot] = field(default_factory=dict)
    _now: datetime | None = None
    _next_due: int = 0  # index of the first slot not yet due (for roll_empty)
    _presented: dict[int, _Presentation] = field(default_factory=dict)
    _presented_for: dict[str, set[int]] = field(default_factory=dict)  # slot id -> dispense ids
    _intakes: list[datetime] = field(default_factory=list)
    _taken: dict[int, datetime] = field(default_factory=dict)  # dispense id -> lifted out at
    _announced: dict[str, set[int]] = field(default_factory=dict)  # slot id -> dose_presented ids
    _outcomes: dict[str, str] = field(default_factory=dict)
    _pauses: dict[str, tuple[datetime, datetime | None]] = field(default_factory=dict)
    _trips: set[str] = field(default_factory=set)  # pause ids with sachets to take along
    _packed: dict[str, int] = field(default_factory=dict)  # trip -> its sachets taken along
    _packed_heard: dict[str, int] = field(default_factory=dict)  # ... while the agent heard it
    _world: World | None = None
    _conditions: dict[str, _Condition] = field(default_factory=dict)
    _rules: list[tuple[date, tuple[str, ...]]] = field(default_factory=list)
    _optional: set[str] = field(default_factory=set)  # slot ids an outcome is allowed for
    # roll_empty: slots named HIGH ahead of their due time while the roll was empty
    _named_ahead: set[str] = field(default_factory=set)
    _decisions: set[tuple[str, int | None]] = field(default_factory=set)  # (roll, index|None)
    _min_interval: timedelta = timedelta(0)  # R2's, as in force now (a schedule update moves it)
    _phantoms: set[int] = field(default_factory=set)  # dispense ids of injected phantom events
    _last_phantom_report: datetime | None = None
    _tray_empty_since: datetime | None = None  # None: occupied (R10)
    _linked_since: datetime | None = None  # None: the agent is not linked now (R10)
    _alert_ids: set[str] = field(default_factory=set)  # published with an alert id (R11)
    _acknowledged: set[str] = field(default_factory=set)  # acknowledged by the centre (R11)
    _owed: list[tuple[str, str | None, object, datetime]] = field(default_factory=list)  # R11
    _report_seq: int = 0  # R12: owed reports so far (their keys)
    _reports_open: int = 0  # R12: owed reports not yet made
    _overdue: dict[str, datetime] = field(default_factory=dict)  # pause id -> overdue at
    _in_tray: int | None = None  # R14: dispense id of the sachet lying in the tray
    _announced_slot: dict[int, str] = field(default_factory=dict)  # dispense id -> its slot
    _silenced_until: datetime | None = None  # R14: the centre silenced the unit until then
    _trip_reports: set[str] = field(default_factory=set)  # R13: trips already reported
    _announced_at: datetime | None = None  # R14: when the dose in the tray was announced
    _escalate_at: datetime | None = None  # R14: when its pattern turns URGENT (a review then)
    _heard_all_along: bool = False  # R12: the agent linked since the tray's dose was announced
    _urgent_shown: bool = False  # R14: the dispenser called the tray's dose URGENT
    # R14: the agent restarted with a clock it did not trust since the tray's dose was announced
    _late_escalation_excused: bool = False
    _held: set[str] = field(default_factory=set)  # R14: slots the agent said are held
    _last_announced: tuple[str, datetime] | None = None  # R12: the last dose_presented's slot
    # R11: what accepting a refused command would publish (this instant only)
    _forbidden: list[tuple[str, str, str | None, object, datetime]] = field(default_factory=list)
    _owed_doses: dict[str, _OwedDose] = field(default_factory=dict)  # R16, by slot id
    # R16: the last intake as the agent could know it (when it happened, or when the agent was
    # next linked if it happened out of its hearing); None: none yet, or not heard yet
    _intake_known: datetime | None = None
    _intake_unheard: bool = False
    # R17: the agent found its stored state damaged and no person has acknowledged its alert
    # yet: None (not locked down), "" (its state_unreadable not heard yet) or that alert's id
    _lockdown: str | None = None
    _lockdown_binding: str = "kept"  # R17: what the report must say of the binding
    _unbound: bool = False  # R17: the binding was lost and no person has bound the unit again
    # R15: every sachet the reader has shown, by (roll id, index): is a rejection true?
    _read_labels: dict[tuple[str, int], SachetLabel] = field(default_factory=dict)
    _lockdown_lifting: str | None = None  # R17: the acknowledgement being given now
    # R18: since when nothing has stopped the discard of the decided sachet at the reader
    _discard_free_since: datetime | None = None
    _chatty_last: dict[str, datetime] = field(default_factory=dict)  # R20: kind -> last one
    _help_owed: datetime | None = None  # R20: a HELP pressed then is owed its help_requested
    _panel_owed: datetime | None = None  # R20: the panel pressed then is owed an answer
    _refusals: list[tuple[str, str, datetime]] = field(default_factory=list)  # R23: owed
    _battery: int = 100  # R21: the dispenser's battery level now (per cent)
    _battery_raised: set[str] = field(default_factory=set)  # R21: published, not cleared since
    # R21: battery conditions whose raise or clear the level owes, and since when
    _battery_owed: dict[str, datetime] = field(default_factory=dict)
    _battery_late: set[str] = field(default_factory=set)  # R21: owed and judged late already
    _low_raised: bool = False  # R22: low_supply published and not cleared since
    _low_owed: datetime | None = None  # R22: since when the roll owes a low_supply
    _low_phantom: datetime | None = None  # R22: a LowSupply naming no roll reached the agent then

    def __post_init__(self) -> None:
        c = self.config
        self._rules = [(c.effective_from, tuple(c.times))]
        self._min_interval = c.min_intake_interval
        self._set_slots(self._reference(self._rules))
        self._next_due = bisect_left(self._dues, c.installed_utc)

    def _reference(self, rules: Sequence[tuple[date, Sequence[str]]]) -> list[RefSlot]:
        c = self.config
        tz = ZoneInfo(c.zone)
        first = c.installed_utc.astimezone(tz).date() - timedelta(days=2)
        last = c.expect_until_utc.astimezone(tz).date() + timedelta(days=4)
        return reference_slots_for_rules(c.zone, rules, first, last)

    def _set_slots(self, slots: list[RefSlot]) -> None:
        self._slots = slots
        self._dues = [s.due_utc for s in slots]
        self._by_id = {s.slot_id: s for s in slots}

    # --- reference lookups ---------------------------------------------------------------------

    @property
    def expected_slot_ids(self) -> list[str]:
        c = self.config
        return [
            s.slot_id
            for s in self._slots
            if c.installed_utc <= s.due_utc < c.expect_until_utc and s.slot_id not in self._optional
        ]

    def slot_for_sachet(self, intended: datetime | None) -> RefSlot | None:
        """The slot a sachet is packed for: the nearest by due instant, if within the tolerance
        (several slots at that one instant: the first by id); None for a print without a time."""
        if intended is None:
            return None
        nearest = self._nearest(intended)
        if nearest is None or abs(nearest.due_utc - intended) > self.config.sachet_time_tolerance:
            return None
        return nearest

    def _nearest(self, at: datetime) -> RefSlot | None:
        i = bisect_left(self._dues, at)
        candidates = [self._slots[j] for j in (i - 1, i) if 0 <= j < len(self._slots)]
        if not candidates:
            return None
        best = min(abs(s.due_utc - at) for s in candidates)
        return next(s for s in candidates if abs(s.due_utc - at) == best)

    def _strictly_closer_slot(self, slot: RefSlot, intended: datetime) -> RefSlot | None:
        """A slot with another due instant that is closer to `intended` than `slot` is."""
        distance = abs(slot.due_utc - intended)
        lo = bisect_left(self._dues, intended - distance)
        hi = bisect_right(self._dues, intended + distance)
        for other in self._slots[lo:hi]:
            if other.due_utc != slot.due_utc and abs(other.due_utc - intended) < distance:
                return other
        return None

    def _paused_at(self, at: datetime) -> str | None:
        for pause_id, window in self._pauses.items():
            if self._covers(window, at):
                return pause_id
        return None

    # --- violations ------------------------------------------------------------------------------

    def _violation(self, rule: str, message: str, at: datetime | None = None) -> None:
        when = at or self._now or self.config.installed_utc
        finding = Finding(rule, when, message)
        self.findings.append(finding)
        main = rule.partition(".")[0]
        if rule in self.config.enforce or main in self.config.enforce:
            seed = "" if self.config.seed is None else f"seed {self.config.seed}, "
            raise InvariantViolation(
                f"judge {rule} ({RULES[main]}): {seed}true time "
                f"{when.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z: {message}"
            )

    # --- time ----------------------------------------------------------------------------------

    def advance(self, now: datetime) -> None:
        """True time moved on to `now` (before whatever happens at `now`)."""
        if self._now is not None and now < self._now:
            raise ValueError(f"true time went back from {self._now} to {now}")
        owed = [o for o in self._owed if o[3] < now]
        if owed:
            self._owed = [o for o in self._owed if o[3] >= now]
            kind, name, value, at = owed[0]
            self._violation(
                "R11",
                f"the centre's command at {_iso(at)} was not confirmed: no {kind}"
                + (f" with {name} {value}" if name else ""),
                at,
            )
        if self._overdue:
            self._review_pauses(now)
        if self._forbidden and self._forbidden[-1][4] < now:
            self._forbidden = []
        if self._lockdown_lifting is not None and self._now is not None and now > self._now:
            self._lockdown_lifting = None  # R17: that acknowledgement stood
        self._now = now
        while self._next_due < len(self._slots) and self._dues[self._next_due] <= now:
            self._at_due(self._slots[self._next_due])
            self._next_due += 1
        if self._owed_doses:
            self._review_doses(now)
        if self._discard_free_since is not None:
            self._review_discard(now)
        if self._battery_owed:
            self._judge_battery(now)
        if self._low_owed is not None:
            self._judge_low_supply(now)
        if self._refusals and now > self._refusals[0][2]:
            (command, result, at), self._refusals = self._refusals[0], []
            self._violation(
                "R23",
                f"the dispenser refused {command} ({result}) at {_iso(at)} and no "
                "dispenser_command_failed told it",
                at,
            )
        if self._panel_owed is not None and now > self._panel_owed:
            pressed, self._panel_owed = self._panel_owed, None
            self._violation(
                "R20",
                f"the unit's panel pressed at {_iso(pressed)} and nothing told (no "
                "panel_help_requested, button_pressed or dose event): a press silently lost",
                pressed,
            )
        if self._help_owed is not None and now > self._help_owed + CHATTY_SLACK:
            pressed, self._help_owed = self._help_owed, None
            self._violation(
                "R20", f"HELP pressed at {_iso(pressed)} and no help_requested told", pressed
            )
        # R14: what the dispenser should show changes at these instants (the bound runs from them)
        if self._silenced_until is not None and now >= self._silenced_until:
            since, self._silenced_until = self._silenced_until, None
            self._review_local(since)
        if self._escalate_at is not None and now >= self._escalate_at:
            since, self._escalate_at = self._escalate_at, None
            self._review_local(since)
            slot_id = self._announced_slot.get(self._in_tray) if self._in_tray else None
            if slot_id is not None and slot_id not in self._outcomes and self._heard_all_along:
                # R12: the centre hears that the dose has not been taken by then
                self._owe_report(
                    f"dose of slot {slot_id} not taken",
                    ("dose_not_taken", {"slot_id": slot_id}),
                    at=since,
                )
        for cond in list(self._conditions.values()):
            if not cond.reported and cond.deadline is not None and now > cond.deadline:
                if cond.what:
                    self._violation(
                        cond.rule,
                        f"{cond.what} since {_iso(cond.onset)}, longer than "
                        f"{cond.bound or self.config.high_report_bound}",
                        cond.deadline,
                    )
                    cond.reported = True
                    continue
                self._violation(
                    cond.rule or f"R8.{cond.name}",
                    ("" if cond.rule else "HIGH ")
                    + f"condition {cond.name}"
                    + (f" (slot {cond.slot_id})" if cond.slot_id else "")
                    + f" since {cond.onset.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z not reported "
                    f"within {cond.bound or self.config.high_report_bound}",
                    cond.deadline,
                )
                cond.reported = True  # once per episode
        for key in [k for k, c in self._conditions.items() if c.reported and (c.slot_id or c.rule)]:
            # a due slot's empty roll, a phantom, an owed report: reported (or judged) once
            self._reports_open -= bool(self._conditions.pop(key).expect)

    def _at_due(self, slot: RefSlot) -> None:
        if (
            slot.slot_id not in self._outcomes
            and slot.slot_id not in self._optional
            and slot.slot_id not in self._presented_for
            and slot.slot_id not in self._announced
            and slot.due_utc >= self.config.installed_utc
            and self._paused_at(slot.due_utc) is None
        ):
            self._owed_doses[slot.slot_id] = _OwedDose(slot)  # R16: reviewed as time goes on
        if slot.slot_id in self._held:
            self._review_local(slot.due_utc)
        world = self._world
        if world is None or world.roll_patient_ref is None or world.remaining > 0:
            return
        if self._paused_at(slot.due_utc) is not None or slot.slot_id in self._outcomes:
            return
        if slot.slot_id in self._optional:
            return  # a dose time a schedule update dropped: no dose is due then
        if slot.slot_id in self._presented_for:
            return  # its sachet was cut early (TAKE): the empty roll keeps nothing from it
        if slot.slot_id in self._named_ahead:
            return  # said HIGH ahead, and the roll has stayed empty since
        key = f"roll_empty {slot.slot_id}"
        # Read "at a slot's due instant" as true time, R8 asked for the report while the agent
        # could not know: a slot is due when the agent's wall clock shows its instant
        # (docs/time-policy.md), and a synchronised clock stepped back an hour shows it an hour
        # late (seed 32 and 41 of the wide world). The bound runs from then.
        agent_due = slot.due_utc + world.clock_behind
        self._conditions[key] = _Condition(
            "roll_empty",
            slot.due_utc,
            self._deadline(agent_due, world.agent_linked),
            slot.slot_id,
            agent_due=agent_due,
        )

    def dose_stop(self, slot: RefSlot, now: datetime) -> tuple[str | None, datetime | None]:
        """R16, the judge's own reference: what in the world stops the dose of `slot` at `now`
        (a reason; None: nothing does), and when that stop ends by itself (None: only when the
        world changes)."""
        w = self._world
        if w is None:
            return "nothing observed yet", None
        if not w.agent_linked:
            return "the agent is not running or not linked", None
        if not w.clock_trusted:
            return "the agent's clock is not trusted", None
        if self._lockdown is not None:
            return "its stored state was damaged and no person has acknowledged it", None
        if self._unbound:
            return "its binding was lost and no person has bound it again", None
        shown = now - w.clock_behind
        if shown < slot.due_utc:
            return "not due yet by the agent's clock", slot.due_utc + w.clock_behind
        if self._paused_at(slot.due_utc) is not None or self._paused_at(shown) is not None:
            return "paused", None
        ref = self.config.patient_ref
        if w.roll_patient_ref is None:
            return "no roll", None
        if w.roll_patient_ref != ref or not w.roll_label_readable:
            return "a roll not naming the patient, or its leader unreadable", None
        if w.faults or w.jammed or w.bin_full:
            return "a dispenser fault", None
        if w.lid_open:
            return "the lid is open", None
        if w.locked:
            return "the cassette is locked", None
        if w.tray_occupied:
            return "a dose in the tray", None
        if any(o.slot.due_utc < slot.due_utc for o in self._owed_doses.values()):
            # doses are given in order: a later one waits while an earlier slot is open (its
            # sachet may still come; both given would be two doses close together)
            return "an earlier dose not given yet, its slot open", None
        if self._intake_unheard:
            return "an intake the agent has not heard of yet", None
        if self._intake_known is not None:
            release = self._intake_known + self._min_interval + w.clock_behind
            if now < release:
                return "the minimum interval since the last intake", release
        label = w.reader
        if label is None or w.remaining <= 0:
            return "no sachet at the reader", None
        if not label.usable or label.patient_ref != ref:
            return "the sachet at the reader cannot be given", None
        # by the agent's clock (ahead of true time while a wall step is not corrected)
        shown_late = now + w.clock_ahead + HELD_CLOCK_SLACK
        expiry = label.roll_expiry_utc
        if expiry is None or expiry - self.config.roll_expired_margin <= shown_late:
            return "the roll has expired", None
        last = label.roll_last_dose_utc
        if last is not None and last < shown_late - self.config.sachet_time_tolerance:
            return "the roll's period has passed", None
        packed = self.slot_for_sachet(label.intended_utc)
        if packed is None or packed.due_utc != slot.due_utc:
            return "the sachet at the reader is not this slot's", None
        return None, None

    def _review_doses(self, now: datetime) -> None:
        """R16: is a due dose that nothing stops cut within the bound?"""
        w = self._world
        # the slot ends when the agent's clock shows its window over
        shift = w.clock_behind - w.clock_ahead if w is not None else timedelta(0)
        bound, window = self.config.dose_bound, self.config.dose_window
        for slot_id, owed in list(self._owed_doses.items()):
            slot = owed.slot
            if (
                slot_id in self._outcomes
                or slot_id in self._presented_for
                or slot_id in self._announced
                or slot_id in self._optional
                or slot_id not in self._by_id
            ):
                del self._owed_doses[slot_id]
                continue
            end = slot.due_utc + shift + window
            for _ in range(2):
                # the world has not changed since the last review (every change is reviewed):
                # free since then, unless a stop came by time alone (a pause's start, expiry)
                due_at = owed.free_since + bound if owed.free_since is not None else None
                if due_at is not None and due_at < min(now, end):
                    if self.dose_stop(slot, due_at)[0] is None:
                        del self._owed_doses[slot_id]
                        self._violation(
                            "R16",
                            f"the dose of slot {slot_id} due {_iso(slot.due_utc)} is not given: "
                            f"nothing has stopped it since {_iso(owed.free_since or now)} "
                            f"(bound {bound})",
                            due_at,
                        )
                        break
                    owed.free_since = None
                if now >= end:
                    del self._owed_doses[slot_id]  # its slot has ended: R3 judges the outcome
                    break
                reason, release = self.dose_stop(slot, now)
                if reason is not None:
                    owed.free_since, owed.release = None, release
                    break
                if owed.free_since is not None:
                    break
                owed.free_since = owed.release if owed.release and owed.release <= now else now
                owed.release = None  # and judged again at once: freed by time, long ago

    def _deadline(self, at: datetime, linked: bool) -> datetime | None:
        return at + self.config.high_report_bound if linked else None

    # --- the physical world -------------------------------------------------------------------

    def schedule_changed(
        self,
        effective_from: date,
        times: Sequence[str],
        min_intake_interval: timedelta | None = None,
    ) -> None:
        """The response centre's schedule update reached the unit now: from `effective_from`
        (local date) the dose times are `times`, until a later rule's date; R2's minimum
        interval is `min_intake_interval` from now on (None: unchanged)."""
        now = self._require_now()
        if min_intake_interval is not None:
            self._min_interval = min_intake_interval
        rules = [r for r in self._rules if r[0] != effective_from]
        rules.append((effective_from, tuple(times)))
        self._rules = sorted(rules)
        new = self._reference(self._rules)
        new_ids = {s.slot_id for s in new}
        old_ids = {s.slot_id for s in self._slots}
        kept = [s for s in self._slots if s.due_utc < now]  # what was due stays as it was
        kept_ids = {s.slot_id for s in kept}
        # only the new rules have it and it was due already; or only the old rules have it and
        # it is still to come (it may have been picked up): an outcome may come, need not
        self._optional -= {s.slot_id for s in new if s.due_utc >= now}  # a dose time again
        self._optional |= {s.slot_id for s in new if s.due_utc < now and s.slot_id not in old_ids}
        self._optional |= {s.slot_id for s in self._slots if s.due_utc >= now} - new_ids
        extra = [s for s in new if s.slot_id not in kept_ids]
        extra += [s for s in self._slots if s.slot_id in self._optional and s.due_utc >= now]
        self._set_slots(sorted({*kept, *extra}))
        self._next_due = bisect_right(self._dues, now)
        self._review_reader(now)
        if self._owed_doses:
            self._review_doses(now)

    def discard_decided(self, roll_id: str, index: int | None) -> None:
        """A person decided that sachet `index` of roll `roll_id` (None: each of its sachets
        that matches no slot) goes to the bin (R5, R8.plan_mismatch, R18)."""
        self._decisions.add((roll_id, index))
        self._review_reader(self._require_now())
        self._review_discard(self._require_now())

    def discard_stop(self, now: datetime) -> str | None:
        """R18, the judge's own reference: what stops the discard of the sachet at the reader
        now (None: it is one a person decided to discard and nothing stops it)."""
        w = self._world
        ref = self.config.patient_ref
        label = w.reader if w is not None else None
        if w is None or label is None:
            return "no sachet at the reader"
        if label.roll_patient_ref != ref or label.patient_ref != ref or not label.usable:
            return "not a sachet of the patient's"
        if self.slot_for_sachet(label.intended_utc) is not None or not self._decided(label):
            return "not a sachet a person decided to discard"
        if not w.agent_linked or not w.clock_trusted or self._lockdown is not None:
            return "the agent cannot act (not linked, its clock untrusted, locked down)"
        if self._paused_at(now - w.clock_behind) or self._paused_at(now + w.clock_ahead):
            return "paused"
        if not w.roll_label_readable or w.faults or w.jammed or w.bin_full or w.lid_open:
            return "the roll's leader unreadable, or a dispenser fault, or its lid open"
        if w.locked or w.tray_occupied or not w.retain_bin:
            return "locked, a dose in the tray, or no bin"
        if w.bin_room is None or w.bin_room < 2:  # a discard never takes the last place (R6)
            return "no room in the bin beside the place kept for a dose from the tray"
        return None

    def _review_discard(self, now: datetime) -> None:
        """R18: is a decided sachet that nothing stops cut into the bin within the bound?"""
        since = self._discard_free_since
        if since is None and not self._decisions:
            return  # nobody decided anything (asked on every change of the world)
        if since is not None and now > since + self.config.high_report_bound:
            due_at = since + self.config.high_report_bound
            if self.discard_stop(due_at) is None:  # not stopped by time alone (a pause)
                self._discard_free_since = None
                label = self._world.reader if self._world is not None else None
                self._violation(
                    "R18",
                    f"sachet {label.index if label else '?'} of roll "
                    f"{label.roll_id if label else '?'}, which a person decided to discard, "
                    f"is still at the reader: nothing has stopped its discard since "
                    f"{_iso(since)}",
                    due_at,
                )
                return
            since = None
        stopped = self.discard_stop(now) is not None
        self._discard_free_since = None if stopped else (since or now)

    def decision_refused(self, roll_id: str, index: int | None) -> None:
        """The unit refused that decision (it did not fit what was loaded): it never happened."""
        self._decisions.discard((roll_id, index))
        self._review_reader(self._require_now())

    def _decided(self, label: SachetLabel) -> bool:
        decisions = self._decisions
        return (label.roll_id, None) in decisions or (label.roll_id, label.index) in decisions

    def _review_reader(self, now: datetime) -> None:
        """R8.plan_mismatch: is the sachet at the reader one of this patient's that matches no
        slot, with nobody's decision on it? R8.sachet_unusable: is it one of this patient's roll
        that no slot can be given (unreadable, no time, another patient's name)?"""
        world = self._world
        label = world.reader if world is not None else None
        ref = self.config.patient_ref
        name: str | None = None
        if label is not None and world is not None and label.roll_patient_ref == ref:
            if world.roll_label_readable and (not label.usable or label.patient_ref != ref):
                name = "sachet_unusable"
            elif (
                label.usable
                and label.patient_ref == ref
                and not self._decided(label)
                and self.slot_for_sachet(label.intended_utc) is None
            ):
                name = "plan_mismatch"
        key = f"{name} {label.roll_id}/{label.index}" if name and label else None
        for other in [
            k
            for k, c in self._conditions.items()
            if c.name in ("plan_mismatch", "sachet_unusable") and k != key
        ]:
            del self._conditions[other]
        if name is not None and key not in self._conditions and label is not None:
            assert world is not None
            assert key is not None
            self._conditions[key] = _Condition(
                name,
                now,
                self._deadline(now, world.agent_linked),
                sachet=(label.roll_id, label.index),
            )

    def world(self, state: World) -> None:
        """The physical state now (call after anything may have changed it)."""
        now = self._now or self.config.installed_utc
        previous = self._world
        self._world = state
        ref = self.config.patient_ref
        present = {
            "wrong_roll": state.roll_patient_ref is not None and state.roll_patient_ref != ref,
            "jam": state.jammed,
            "bin_full": state.bin_full,
            "roll_unreadable": state.roll_patient_ref == ref and not state.roll_label_readable,
            "clock_untrusted": not state.clock_trusted,
        }
        for name, on in present.items():
            if on and name not in self._conditions:
                self._conditions[name] = _Condition(
                    name, now, self._deadline(now, state.agent_linked)
                )
            elif not on:
                ended = self._conditions.pop(name, None)
                cleared = _CLEARED_EVENTS.get(name)
                if ended is not None and ended.reported and cleared is not None:
                    self._owe_report(f"end of {name}", (cleared, {}), linked=state.agent_linked)
        if state.roll_patient_ref is None or state.remaining > 0:
            # a fuller roll, or the roll was taken out: no longer an empty roll at due time
            for key in [k for k, c in self._conditions.items() if c.name == "roll_empty"]:
                del self._conditions[key]
        if state.roll_patient_ref is not None and state.remaining > 0:
            self._named_ahead.clear()  # a refill: what was said ahead is void
        if previous is not None and state.clock_behind != previous.clock_behind:
            for c in self._conditions.values():
                if c.agent_due is not None and not c.reported and c.agent_due > now:
                    # not yet due by the agent's clock: due when the clock, as it is now, shows it
                    c.agent_due = max(now, c.onset + state.clock_behind)
                    c.deadline = self._deadline(c.agent_due, _knowable(c, state))
        if previous is not None and (
            (state.agent_linked and not previous.agent_linked)
            or (state.clock_trusted and not previous.clock_trusted)
        ):
            for c in self._conditions.values():
                if c.deadline is None and not c.reported and _knowable(c, state):
                    c.deadline = max(now, c.agent_due or now) + (
                        c.bound or self.config.high_report_bound
                    )
        for c in self._conditions.values():
            if not c.reported and not _knowable(c, state):
                c.deadline = None
        if previous is None or state.reader != previous.reader:
            if state.reader is not None:
                self._read_labels[(state.reader.roll_id, state.reader.index)] = state.reader
            self._review_reader(now)
        if not state.tray_occupied and (previous is None or previous.tray_occupied):
            self._tray_empty_since = now
        elif state.tray_occupied:
            self._tray_empty_since = None
        if state.agent_linked and (previous is None or not previous.agent_linked):
            self._linked_since = now
        elif not state.agent_linked:
            self._linked_since = None
        if not state.tray_occupied:
            self._in_tray = None
        if not state.agent_linked:
            self._heard_all_along = False
        elif self._intake_unheard:
            self._intake_known, self._intake_unheard = now, False  # R16: it may hear of it now
        self._review_local(now)
        if self._owed_doses:
            self._review_doses(now)
        self._review_discard(now)
        self._review_low_supply(now)

    def agent_restarted(self, *, clock_trusted: bool = True) -> None:
        """The agent process started again now (its memory of what it did is what it stored),
        with a wall clock it trusts or not (R14: without one it cannot tell how long the dose in
        the tray has waited, and its escalation may come late, never undone)."""
        self._heard_all_along = False
        self._chatty_last.clear()  # R20: the agent keeps when it last told one in memory only
        if not clock_trusted and self._announced_at is not None:
            self._late_escalation_excused = True
        # the agent keeps a silence in memory only: restarted, it calls the patient to the dose
        # in the tray again (the safe side; the centre may silence again). Read as lasting,
        # R14 failed an agent calling URGENT after a restart (wide world seed 273)
        if self._silenced_until is not None:
            self._silenced_until = None
            self._review_local(self._require_now())

    def silenced(self, duration: timedelta) -> None:
        """The unit accepted the centre's silence now, for `duration` (R14)."""
        now = self._require_now()
        until = now + duration
        if self._silenced_until is None or until > self._silenced_until:
            self._silenced_until = until
        self._review_local(now)

    def _review_local(self, now: datetime) -> None:
        """R14: does the dispenser call the patient to the announced dose in the tray, and is its
        cassette locked exactly while another patient's roll is loaded?"""
        world = self._world
        if world is None:
            return
        slot_id = self._announced_slot.get(self._in_tray) if self._in_tray is not None else None
        calling: tuple[str | None, ...] = (None, "REMINDER", "URGENT", "FAULT")
        after, at = self.config.escalate_after, self._announced_at
        if after is not None and at is not None:
            # first the reminder; the escalation at its time, even across a restart or a link
            # drop (the agent stores the step and keeps its time: a patient called urgently is
            # never called less urgently because the agent restarted)
            if now < at + after:
                calling = (None, "REMINDER", "FAULT")
            elif self._urgent_shown or not self._late_escalation_excused:
                calling = (None, "URGENT", "FAULT")
        open_dose = (
            slot_id is not None and slot_id not in self._outcomes and self._silenced_until is None
        )
        if open_dose and world.pattern == "URGENT":
            self._urgent_shown = True  # from now on never less urgent, restart or not
        # each message is formatted only when its condition holds (asked on every dose event
        # and world change)
        bad = open_dose and world.pattern not in calling
        self._local_condition(
            "signal",
            f"the dose of slot {slot_id} (dispense id {self._in_tray}) lies in the tray and "
            f"the dispenser shows {world.pattern}, not {' or '.join(map(str, calling[1:]))}"
            if bad
            else None,
            now,
        )
        bad = world.pattern in ("REMINDER", "URGENT") and not open_dose
        self._local_condition(
            "quiet",
            f"the dispenser shows {world.pattern} "
            + (
                "while the centre silenced it"
                if self._silenced_until is not None
                else "with no dose of an open slot in the tray"
            )
            if bad
            else None,
            now,
        )
        # Read "a due dose" in true time, R14 asked for HELD while the agent's clock, stepped
        # back an hour, did not show the slot due (wide world seed 251): due by that clock.
        shown_now = now - world.clock_behind
        held = (
            [s for s in self._held if s not in self._outcomes and self._by_id_due(s) <= shown_now]
            if self._held
            else []
        )
        # a dispenser without HELD_PATTERN refuses HELD: the agent shows FAULT instead (SPEC 3)
        held_shown = ("HELD", "FAULT") if world.held_pattern else ("FAULT",)
        bad = (
            bool(held)
            and not world.tray_occupied
            and self._silenced_until is None
            and world.pattern is not None
            and world.pattern not in held_shown
        )
        self._local_condition(
            "held",
            f"the due dose of slot {min(held)} is held and the dispenser shows "
            f"{world.pattern}, not {' or '.join(held_shown)}"
            if bad
            else None,
            now,
        )
        # the unit's own panel lights its held light while a due dose the agent said is held
        # is neither given nor ended (a dose in the tray may be calling at the same time; a
        # light, not a sound: no silence), and only while some dose the agent said is held has
        # no outcome (a patient's early TAKE may be answered "held" before its slot is due)
        panel = world.panel_held
        panel_wrong = panel is not None and (
            # (an agent whose clock is untrusted cannot tell that a dose is due)
            (not panel and bool(held) and world.clock_trusted)
            or (panel and not any(s not in self._outcomes for s in self._held))
        )
        self._local_condition(
            "panel",
            (
                "the unit's held light is on with no dose held"
                if panel
                else f"the due dose of slot {min(held)} is held and the unit's held light is off"
            )
            if panel_wrong
            else None,
            now,
        )
        # a blank leader names nobody: not this patient's roll either (R8.wrong_roll)
        foreign = world.roll_patient_ref not in (None, self.config.patient_ref)
        # R17: a unit locked down after a damaged state keeps its cassette locked too
        lock = foreign or self._lockdown is not None
        bad = world.lock_supported and world.locked is not None and world.locked != lock
        self._local_condition(
            "lock",
            f"the cassette is {'unlocked' if lock else 'locked'} with "
            + (f"a roll of {world.roll_patient_ref!r}" if foreign else "no roll of another")
            + " loaded"
            + (" and the unit locked down (state unreadable)" if self._lockdown is not None else "")
            if bad
            else None,
            now,
        )
        # another's roll, or the unit locked down: the dispenser shows FAULT (a person must come)
        bad = (
            lock
            and world.pattern is not None
            and world.pattern != "FAULT"
            and self._silenced_until is None
        )
        self._local_condition(
            "fault",
            f"the dispenser shows {world.pattern}, not FAULT, with "
            + ("another's roll loaded" if foreign else "the unit locked down (state unreadable)")
            if bad
            else None,
            now,
        )
        self._review_alarm(world, lock, now)

    def _review_alarm(self, world: World, lock: bool, now: datetime) -> None:
        """R14 "alarm": the dispenser shows FAULT only for a reason (a person must come): another's
        roll or the unit locked down, its own silence alarm (SPEC 4.7), or, on a dispenser
        without HELD_PATTERN, a dose held (SPEC 3: FAULT instead of HELD) or every dose held
        while the agent's clock is untrusted. A unit that alarms for nothing teaches the
        patient and the carers to ignore its alarm."""
        bad = world.pattern == "FAULT" and not (lock or world.silence_alarm)
        if bad and not world.held_pattern:
            held = any(s not in self._outcomes for s in self._held)
            bad = not held and world.clock_trusted
        self._local_condition(
            "alarm",
            "the dispenser shows FAULT with no roll of another loaded, the unit not locked "
            "down, no silence alarm"
            + ("" if world.held_pattern else ", no dose held and its clock trusted")
            if bad
            else None,
            now,
        )

    def _by_id_due(self, slot_id: str) -> datetime:
        slot = self._by_id.get(slot_id)
        return slot.due_utc if slot is not None else datetime.max.replace(tzinfo=UTC)

    def _local_condition(self, name: str, what: str | None, now: datetime) -> None:
        """R14's condition `name` holds now (`what` says how) or not (None)."""
        key = _LOCAL_KEYS[name]
        if what is None:
            self._conditions.pop(key, None)
        elif key not in self._conditions:
            linked = self._world is not None and self._world.agent_linked
            self._conditions[key] = _Condition(
                name, now, self._deadline(now, linked), rule="R14", what=what
            )

    def unsupported(self, command: str) -> None:
        """The dispenser answered `command` UNSUPPORTED (R14): the agent asked its model for
        something it does not have. SPEC 3: a gated message goes only to a dispenser whose
        Capabilities carry the bit (no HELD without HELD_PATTERN, no SetLock without LOCK, no
        Discard or Retain without RETAIN_BIN, no KeepAlive without AGENT_WATCHDOG)."""
        self._violation(
            "R14",
            f"the agent sent {command} to a dispenser that lacks the feature (UNSUPPORTED): "
            "a gated message goes only to a dispenser that announces it",
        )

    def presented(self, dispense_id: int, label: SachetLabel) -> None:
        """A sachet was cut into the tray (R1, R4)."""
        now = self._require_now()
        self._judge_lockdown(f"sachet {label.index} of roll {label.roll_id} presented")
        slot = self.slot_for_sachet(label.intended_utc)
        behind = self._world.clock_behind if self._world is not None else timedelta(0)
        self._presented[dispense_id] = _Presentation(dispense_id, now, label, slot, now - behind)
        self._in_tray = dispense_id
        self._owe_report(
            f"dose {dispense_id} presented",
            ("dose_presented", {"dispense_id": dispense_id}),
            # cut while the agent could not hear it and gone before it could look: what became
            # of that dispense id (e.g. missed, dispense_unconfirmed: in doubt, not given)
            ("slot_outcome", {"dispense_id": dispense_id}),
        )
        ref = self.config.patient_ref
        if label.roll_patient_ref != ref or label.patient_ref != ref:
            self._violation(
                "R4",
                f"presented sachet {label.index} of roll {label.roll_id} (dispense id "
                f"{dispense_id}) is another patient's: leader {label.roll_patient_ref!r}, "
                f"sachet {label.patient_ref!r}, bound {ref!r}",
            )
        if label.roll_expiry_utc is None:
            self._violation(
                "R4",
                f"presented sachet {label.index} of roll {label.roll_id} (dispense id "
                f"{dispense_id}) from a roll whose expiry cannot be read",
            )
        elif label.roll_expiry_utc <= now:
            self._violation(
                "R4",
                f"presented sachet {label.index} of roll {label.roll_id} (dispense id "
                f"{dispense_id}) from a roll that expired "
                f"{label.roll_expiry_utc.astimezone(UTC):%Y-%m-%d %H:%M}Z",
            )
        if not label.readable:
            self._violation(
                "R4",
                f"presented sachet {label.index} of roll {label.roll_id} (dispense id "
                f"{dispense_id}), which the reader cannot read",
            )
        if slot is None:
            self._violation(
                "R4",
                f"presented sachet {label.index} of roll {label.roll_id} (dispense id "
                f"{dispense_id}) is packed for {_iso_or_none(label.intended_utc)}, no slot of "
                "the schedule within the tolerance",
            )
        else:
            self._count_presentation(slot.slot_id, dispense_id, "its label")

    def _count_presentation(self, slot_id: str, dispense_id: int, by: str) -> None:
        ids = self._presented_for.setdefault(slot_id, set())
        ids.add(dispense_id)
        if len(ids) > 1:
            self._violation(
                "R1",
                f"slot {slot_id} got a second sachet (dispense ids {sorted(ids)}; this one "
                f"attributed by {by})",
            )

    def taken(self, dispense_id: int) -> None:
        """The patient lifted the dose out of the tray (R2)."""
        now = self._require_now()
        if self._intakes:
            last = self._intakes[-1]
            if now - last < self._min_interval:
                self._violation(
                    "R2",
                    f"dose (dispense id {dispense_id}) taken {_minutes(now - last)} after the "
                    f"previous intake at {_iso(last)} (minimum "
                    f"{_minutes(self._min_interval)})",
                )
        self._intakes.append(now)
        self._taken.setdefault(dispense_id, now)
        if self._world is not None and self._world.agent_linked:
            self._intake_known = now
        else:
            self._intake_unheard = True
        if self._world is not None and self._world.agent_linked:
            self._owe_report(
                f"dose {dispense_id} taken",
                ("slot_outcome", {"dispense_id": dispense_id, "outcome": INTAKES}),
                ("dose_taken_late", {"dispense_id": dispense_id}),
            )

    def taken_for_travel(self, dispense_id: int) -> None:
        """Someone lifted a presented sachet out to take along on a trip (R4, R9, R12; not an
        intake)."""
        now = self._require_now()
        self._taken.setdefault(dispense_id, now)
        shown = self._presented.get(dispense_id)
        label, slot = (shown.label, shown.label_slot) if shown is not None else (None, None)
        trip = None
        if slot is not None:
            trip = next(
                (
                    pause_id
                    for pause_id in self._trips
                    if self._covers(self._pauses[pause_id], slot.due_utc)
                ),
                None,
            )
        # Read "packed for a trip" as whatever someone packing lifts out, R4 failed the slot's
        # own dose, presented when the agent's clock showed no pause in force yet (wide world
        # seed 338: the clock stepped back an hour, the 12:00 dose presented at true 13:00, the
        # trip from 12:27 being packed). The agent, its clock showing no pause in force,
        # presented it for its slot, as R4 judged at presentation, and packed nothing for the
        # trip: its outcome may be an intake.
        own_dose = (
            shown is not None
            and slot is not None
            and trip is None
            and self._paused_at(shown.agent_at or shown.at) is None
        )
        if self._world is not None and self._world.agent_linked:
            outcomes = ("dispensed_for_travel", *INTAKES) if own_dose else "dispensed_for_travel"
            self._owe_report(
                f"dose {dispense_id} taken along",
                ("slot_outcome", {"dispense_id": dispense_id, "outcome": outcomes}),
            )
        if shown is None or label is None or own_dose:
            return  # nothing physical to judge, or the slot's own dose
        what = f"sachet {label.index} of roll {label.roll_id} (dispense id {dispense_id})"
        if slot is None or trip is None:
            self._violation(
                "R4",
                f"{what} taken along on a trip at {_iso(now)} is packed for "
                f"{_iso_or_none(label.intended_utc)}, no slot of a travel pause",
            )
            return
        self._packed[trip] = self._packed.get(trip, 0) + 1
        if self._world is not None and self._world.agent_linked:
            self._packed_heard[trip] = self._packed_heard.get(trip, 0) + 1
        if label.roll_expiry_utc is None or label.roll_expiry_utc <= slot.due_utc:
            self._violation(
                "R4",
                f"{what} taken along for slot {slot.slot_id} due {_iso(slot.due_utc)}: its roll "
                f"expires before, at {_iso_or_none(label.roll_expiry_utc)}",
            )

    @staticmethod
    def _covers(window: tuple[datetime, datetime | None], at: datetime) -> bool:
        start, end = window
        return start <= at and (end is None or at < end)

    def discarded(self, dispense_id: int, label: SachetLabel) -> None:
        """A sachet was cut straight into the bin (R5, R12)."""
        self._judge_lockdown(f"sachet {label.index} of roll {label.roll_id} discarded")
        self._owe_report(
            f"sachet {label.index} discarded", ("sachet_discarded", {"sachet_index": label.index})
        )
        slot = self.slot_for_sachet(label.intended_utc)
        what = (
            f"sachet {label.index} of roll {label.roll_id} packed for "
            f"{_iso_or_none(label.intended_utc)} (dispense id {dispense_id})"
        )
        decisions = self.config.discard_decisions
        if slot is None:
            if "no_slot" not in decisions and not self._decided(label):
                self._violation(
                    "R5",
                    f"discarded {what}: it matches no slot of the schedule (a plan mismatch) "
                    "and nobody decided to discard it",
                )
            return
        if "stale" in decisions and slot.slot_id in self._outcomes:
            return
        self._violation(
            "R5",
            f"discarded {what}: its slot {slot.slot_id} has no published outcome yet",
        )

    def retained(self, dispense_id: int) -> None:
        """The dose `dispense_id` went back from the tray into the bin (R12)."""
        self._owe_report(
            f"dose {dispense_id} retained", ("dose_retained", {"dispense_id": dispense_id})
        )

    def bin_fill(self, fill: int, capacity: int, discards: int = 0) -> None:
        """R6: the bin now holds `fill`, `discards` of the sachets just put in cut straight in."""
        if fill > capacity:
            self._violation("R6", f"bin holds {fill} sachets, capacity {capacity}")
        elif discards and fill >= capacity:
            self._violation(
                "R6",
                f"a discard took the bin's last place ({fill} of {capacity}): no dose can go "
                "back from the tray any more",
            )

    def discard_refused_bin_full(self, dispense_id: int) -> None:
        """R6: the dispenser refused a discard because its bin is full."""
        self._violation("R6", f"discard (dispense id {dispense_id}) sent to a full bin")

    def pause(
        self, pause_id: str, start: datetime, end: datetime | None, *, take_along: bool = False
    ) -> None:
        """A pause is in force (or planned) for [start, end); `take_along`: a trip whose sachets
        may be dispensed to take along."""
        self._pauses[pause_id] = (start, end)
        if take_along:
            self._trips.add(pause_id)
        overdue = self._chain_start(start) + self.config.pause_max
        if end is None or end > overdue:
            self._overdue[pause_id] = overdue
        if self._owed_doses and self._now is not None:
            self._review_doses(self._now)  # R16: a pause in force stops a dose from now

    def pause_ended(self, pause_id: str) -> None:
        start, end = self._pauses[pause_id]
        now = self._require_now()
        self._pauses[pause_id] = (start, min(end, now) if end is not None else now)
        if self._owed_doses:
            self._review_doses(now)

    # --- the published stream -------------------------------------------------------------------

    def published(
        self,
        kind: str,
        priority: str,
        fields: dict[str, object],
        alert_id: str | None = None,
        vkp_code: str | None = VKP_NOT_SHOWN,
    ) -> None:
        if alert_id is not None:
            self._alert_ids.add(alert_id)
        if vkp_code != VKP_NOT_SHOWN and kind in ("slot_outcome", "dose_held"):
            self._judge_vkp(kind, priority, fields, vkp_code)
        if kind in PANEL_ANSWERS:
            self._panel_owed = None
        if kind in CHATTY_EVENTS:
            self._judge_chatty(kind)
            if kind == "help_requested":
                self._help_owed = None
        elif kind in BATTERY_EVENTS:
            self._on_battery_event(kind)
        elif kind in ("low_supply", "low_supply_cleared"):
            self._on_low_supply_event(kind, fields)
        if self._owed:
            self._owed = [
                o
                for o in self._owed
                if not (o[0] == kind and (o[1] is None or fields.get(o[1]) == o[2]))
            ]
        for what, forbidden, name, value, _ in self._forbidden:
            if kind == forbidden and (name is None or fields.get(name) == value):
                self._violation(
                    "R11",
                    f"{kind} after a command the rules refuse ({what}): the unit took it",
                )
        if kind == PHANTOM_REPORT:
            self._last_phantom_report = self._require_now()
            for cond in self._conditions.values():
                cond.reported = cond.reported or cond.name == PHANTOM
            return
        if self._phantoms and fields.get("dispense_id") in self._phantoms:
            self._violation(
                "R10",
                f"{kind} names dispense id {fields.get('dispense_id')}, which only a phantom "
                "dispenser event ever named",
            )
        if priority == HIGH and kind in _SLOT_EVENTS:
            self._note_named_ahead(fields)
        if kind == "slot_outcome":
            self._on_outcome(priority, fields, alert_id)
            self._owe_left_in_tray(fields)
            self._held.discard(str(fields.get("slot_id")))
            self._review_local(self._require_now())
            if fields.get("reason") != "roll_period_passed":
                self._conditions.pop(f"R15 {fields.get('slot_id')}", None)
        elif kind == "dose_presented":
            self._on_presented_event(fields)
            self._held.discard(str(fields.get("slot_id")))
            self._review_local(self._require_now())
            self._conditions.pop(f"R15 {fields.get('slot_id')}", None)  # given after all
        elif kind == "dose_not_taken":
            self._on_not_taken(fields)
        elif kind == "dose_held" and isinstance(fields.get("slot_id"), str):
            self._held.add(str(fields["slot_id"]))
            self._review_local(self._require_now())
            self._conditions.pop(f"R15 {fields['slot_id']}", None)  # another reason now
            if fields.get("reason") == "roll_period_passed":
                self._judge_period_passed(str(fields["slot_id"]))
        elif kind in ("travel_dispensed", "travel_short"):
            self._on_trip_report(kind, fields)
        elif kind == "dose_left_in_tray" and fields.get("reason") not in LEFT_IN_TRAY_REASONS:
            self._violation(
                "R12",
                f"dose_left_in_tray (dispense id {fields.get('dispense_id')}) gives reason "
                f"{fields.get('reason')!r}: a dose is left only for want of a bin or room in it",
            )
        elif kind == "pause_reminder":
            self._on_pause_reminder(fields)
        elif kind == "panel_help_requested":
            self._judge_panel_reason(fields)
        elif kind == "button_pressed":
            self._judge_panel_take(fields)
        elif kind == "dispenser_command_failed":
            self._on_command_failed(fields)
        elif kind == "pause_overdue":
            self._judge_overdue_raised()
        elif kind == "sachet_rejected":
            self._judge_rejection(fields)
        elif kind == "state_unreadable":
            self._on_state_unreadable(priority, fields, alert_id)
        if self._reports_open:
            for key in [k for k, c in self._conditions.items() if c.expect and not c.reported]:
                cond = self._conditions[key]
                if any(kind == k and _has(fields, want) for k, want in cond.expect):
                    cond.reported = True
                    del self._conditions[key]
                    self._reports_open -= 1
        if priority == HIGH:
            for cond in self._conditions.values():
                if cond.reported or cond.rule:  # R10's phantoms, R12's reports, R14's
                    continue
                if cond.name == "roll_empty":
                    cond.reported = kind in _SLOT_EVENTS and fields.get("slot_id") == cond.slot_id
                elif cond.name == "plan_mismatch":
                    cond.reported = kind == "plan_mismatch" and cond.sachet == (
                        fields.get("roll_id"),
                        fields.get("sachet_index"),
                    )
                elif kind in _CONDITION_EVENTS[cond.name]:
                    names = (fields.get("roll_id"), fields.get("index"))
                    # a report naming a sachet must name this one
                    cond.reported = names[1] is None or cond.sachet in (None, names)

    def _judge_rejection(self, fields: dict[str, object]) -> None:
        """R15: a sachet is rejected only when it truly cannot be given to this patient."""
        roll_id, index = fields.get("roll_id"), fields.get("index")
        if not isinstance(roll_id, str) or not isinstance(index, int):
            return
        label = self._read_labels.get((roll_id, index))
        if label is None:
            return  # never at the reader while the judge looked: nothing to compare
        ref = self.config.patient_ref
        if label.usable and label.patient_ref == ref and label.roll_patient_ref == ref:
            self._violation(
                "R15",
                f"sachet_rejected ({fields.get('reason')}) for sachet {index} of roll {roll_id}: "
                "readable, printed with a time and for this patient",
            )

    def _judge_named_sachet(self, what: str, fields: dict[str, object], label: SachetLabel) -> None:
        """R12: a report of a dispense id the dispenser cut names the sachet it cut."""
        index, roll_id = fields.get("sachet_index", label.index), fields.get("roll_id")
        if index != label.index or (roll_id is not None and roll_id != label.roll_id):
            self._violation(
                "R12",
                f"{what} for dispense id {fields.get('dispense_id')} names sachet {index} of roll "
                f"{roll_id}; the dispenser cut sachet {label.index} of roll {label.roll_id}",
            )

    def _judge_outcome_report(
        self,
        slot: RefSlot,
        outcome: str,
        priority: str,
        fields: dict[str, object],
        alert_id: str | None,
    ) -> None:
        """R3: the outcome names its slot's due instant, and a dose not given is an alarm."""
        for name in ("due_utc", "due_local"):
            text = fields.get(name)
            if text is None:
                continue
            try:
                said = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
            except ValueError:
                said = None
            if said is None or said.tzinfo is None or said != slot.due_utc:
                self._violation(
                    "R3",
                    f"outcome {outcome} for slot {slot.slot_id} says {name} {text}, "
                    f"the slot is due {_iso(slot.due_utc)}",
                )
        deviation = fields.get("deviation")
        wanted = _OUTCOME_DEVIATIONS.get(outcome, (None,))
        if outcome == "missed" and slot.slot_id in self._announced:
            wanted = (MISSED_IN_TRAY,)  # the agent said its dose was in the tray
        if deviation not in wanted:
            self._violation(
                "R3",
                f"outcome {outcome} for slot {slot.slot_id} is recorded as deviation "
                f"{deviation!r}, not {' or '.join(map(repr, wanted))}",
            )
        if outcome not in QUIET_OUTCOMES and (priority != HIGH or alert_id is None):
            self._violation(
                "R3",
                f"outcome {outcome} for slot {slot.slot_id} is {priority} "
                f"{'without' if alert_id is None else 'with'} an alert id: a dose not given is a "
                "latched HIGH alarm",
            )

    def _note_named_ahead(self, fields: dict[str, object]) -> None:
        """roll_empty: a HIGH event naming a slot not yet due, published while the roll is
        empty (an agent whose clock is untrusted cannot tell when it comes due, SAFETY.md H4)."""
        world, slot_id = self._world, fields.get("slot_id")
        if world is None or world.remaining > 0 or not isinstance(slot_id, str):
            return
        slot = self._by_id.get(slot_id)
        if slot is not None and slot.due_utc > self._require_now():
            self._named_ahead.add(slot_id)

    def centre_command(self, what: str, key: object = None) -> None:
        """The response centre's (or a technician's) command reaches the unit now (R11):
        "acknowledge" (key: the alert id), "silence", "discard" (the roll id), "schedule" (the
        version), "pause" or "resume" (the pause id), "bind" (a technician binds the patient).
        Its confirmation is owed before true time moves on, unless `centre_refused` follows."""
        now = self._require_now()
        owed: tuple[str, str | None, object] | None = None
        if what == "acknowledge":
            if key in self._alert_ids and key not in self._acknowledged:
                owed = ("alert_acknowledged", "alert_id", key)
            if self._lockdown and key == self._lockdown:
                # R17: a person decided; the unit may give doses again (unless it refuses)
                self._lockdown, self._lockdown_lifting = None, self._lockdown
                self._review_local(now)
            if isinstance(key, str):
                self._acknowledged.add(key)
        elif what == "silence":
            owed = ("alert_silenced", None, None)
        else:
            owed = {
                "discard": ("plan_mismatch_decided", "roll_id", key),
                "schedule": ("schedule_changed", "version", key),
                "pause": ("pause_started", "pause_id", key),
                "resume": ("pause_ended", "pause_id", key),
                "bind": ("binding_changed", "bound", True),
            }[what]
        if owed is not None:
            self._owed.append((*owed, now))

    def _owe_left_in_tray(self, fields: dict[str, object]) -> None:
        """R12: a dose whose slot has ended while it lies in the tray of a dispenser without a
        retain bin stays there (SPEC 3: RETAIN_BIN) until a person lifts it out: the centre hears
        which dose is left and why (`dose_stuck_in_tray`, or `dose_left_in_tray` for a pause,
        naming its dispense id with reason `no_retain_bin`)."""
        w, dispense_id = self._world, fields.get("dispense_id")
        if w is None or w.retain_bin or not w.tray_occupied or dispense_id is None:
            return
        if dispense_id != self._in_tray:
            return
        want: dict[str, object] = {"dispense_id": dispense_id, "reason": "no_retain_bin"}
        self._owe_report(
            f"dose {dispense_id} left in a tray without a bin",
            ("dose_stuck_in_tray", want),
            ("dose_left_in_tray", want),
        )

    def _owe_report(
        self,
        what: str,
        *expect: tuple[str, dict[str, object]],
        linked: bool | None = None,
        at: datetime | None = None,
    ) -> None:
        """R12: one of `expect` is owed within the bound (while the agent is linked) from `at`
        (None: now)."""
        now = at or self._require_now()
        if linked is None:
            linked = self._world is not None and self._world.agent_linked
        self._report_seq += 1
        self._reports_open += 1
        self._conditions[f"report {what} #{self._report_seq}"] = _Condition(
            f"report of {what}",
            now,
            now + self.config.record_bound if linked else None,
            rule="R12",
            expect=expect,
            bound=self.config.record_bound,
        )

    def _review_pauses(self, now: datetime) -> None:
        """R8.pause_overdue: a chain of pauses in force for `pause_max` now."""
        for pause_id, at in list(self._overdue.items()):
            window = self._pauses.get(pause_id)
            key = f"pause_overdue {pause_id}"
            if window is None or not self._covers(window, now):
                if window is None or (window[1] is not None and now >= window[1]):
                    del self._overdue[pause_id]
                self._conditions.pop(key, None)
                continue
            if now >= at and key not in self._conditions:
                # Read "in force for pause_max" in true time, R8.pause_overdue asked for the
                # report while the agent could not know: its synchronised clock stepped back an
                # hour shows the pause's maximum an hour late (wide world seed 361), and an
                # untrusted clock cannot tell how long it has lasted (seed 316: a Pi boot in the
                # pause, its clock a guess). The bound runs from when the agent's trusted clock
                # shows the maximum reached.
                w = self._world
                linked = w is not None and w.agent_linked and w.clock_trusted
                agent_due = at + (w.clock_behind if w is not None else timedelta(0))
                self._conditions[key] = _Condition(
                    "pause_overdue", at, self._deadline(agent_due, linked), agent_due=agent_due
                )

    def _judge_overdue_raised(self) -> None:
        """R8.pause_overdue: raised only once a pause in force has lasted `pause_max` (its chain,
        on the agent's trusted clock)."""
        world, now = self._world, self._require_now()
        if world is None or not world.clock_trusted:
            return
        agent_now = now - world.clock_behind + world.clock_ahead
        for start, end in self._pauses.values():
            if self._covers((start, end), agent_now) and (
                self._chain_start(start) + self.config.pause_max <= agent_now + CHATTY_SLACK * 60
            ):
                return
        self._violation(
            "R8.pause_overdue",
            f"pause_overdue while no pause in force has lasted {self.config.pause_max}",
        )

    def _chain_start(self, start: datetime) -> datetime:
        """The start of the chain of pauses (overlapping or end to start) reaching `start`."""
        since, moved = start, True
        while moved:
            moved = False
            for first, end in self._pauses.values():
                if first < since and (end is None or end >= since):
                    since, moved = first, True
        return since

    def forbid(self, what: str, kind: str, name: str | None = None, value: object = None) -> None:
        """R11: a command the rules refuse (`what`) reaches the unit now: no `kind` event (with
        `name` = `value`) may say it was taken."""
        self._forbidden.append((what, kind, name, value, self._require_now()))

    def centre_refused(self) -> None:
        """The unit refused the command just given (it did not fit): nothing is owed for it."""
        if self._owed:
            self._owed.pop()
        if self._lockdown_lifting is not None:  # that acknowledgement did not happen
            self._lockdown, self._lockdown_lifting = self._lockdown_lifting, None
            self._review_local(self._require_now())

    def _judge_vkp(
        self, kind: str, priority: str, fields: dict[str, object], code: str | None
    ) -> None:
        """R19: a dose not handed over is recorded under its national code (VKP 3.3, or 3.7
        when the dispenser was empty; a HIGH dose_held is that: no roll to give it from); a dose
        given, skipped while paused or taken along is no alert and carries none."""
        if kind == "dose_held":
            want: tuple[str | None, ...] = (VKP_EMPTY,) if priority == HIGH else (None,)
        elif fields.get("outcome") in QUIET_OUTCOMES:
            want = (None, "3.3") if fields.get("outcome") == "taken_unconfirmed" else (None,)
        else:
            want = VKP_NOT_HANDED_OVER
        if code not in want:
            self._violation(
                "R19",
                f"{priority} {kind} for slot {fields.get('slot_id')} "
                f"({fields.get('outcome') or fields.get('reason')}) carries VKP code {code}, "
                f"not {' or '.join(map(str, want))}",
            )

    def _judge_chatty(self, kind: str) -> None:
        """R20: lid openings and button presses are told at most once per interval (a patient
        pressing again and again, or a lid left open, is no alarm flood at the centre)."""
        now = self._require_now()
        last = self._chatty_last.get(kind)
        self._chatty_last[kind] = now
        if last is not None and now - last < self.config.chatty_interval - CHATTY_SLACK:
            self._violation(
                "R20",
                f"{kind} at {_iso(now)}, {_minutes(now - last)} after the last one: at most one "
                f"per {self.config.chatty_interval}",
            )

    def help_pressed(self) -> None:
        """R20: the patient presses HELP now (call before the agent hears it)."""
        now = self._require_now()
        last = self._chatty_last.get("help_requested")
        linked = self._world is not None and self._world.agent_linked
        if linked and (last is None or now - last >= self.config.chatty_interval + CHATTY_SLACK):
            self._help_owed = now

    def panel_pressed(self) -> None:
        """R20: the patient presses the unit's own panel button now (call before the agent hears
        it; the Pi is up)."""
        now = self._require_now()
        if self._world is None or not self._world.agent_linked:
            return
        told = (self._chatty_last.get(k) for k in ("panel_help_requested", "button_pressed"))
        if all(t is None or now - t >= self.config.chatty_interval + CHATTY_SLACK for t in told):
            self._panel_owed = now

    def _judge_panel_reason(self, fields: dict[str, object]) -> None:
        """R20: a panel press answered as a help call says truly why no dose was within reach."""
        world, now = self._world, self._require_now()
        if world is None:
            return
        reason, text = fields.get("reason"), fields.get("next_due_utc")
        next_due = datetime.fromisoformat(text) if isinstance(text, str) else None
        agent_now = now - world.clock_behind + world.clock_ahead
        wrong: str | None = None
        slot_id = self._announced_slot.get(self._in_tray) if self._in_tray is not None else None
        due = self._open_due_slot(agent_now) if world.clock_trusted else None
        if slot_id is not None and slot_id not in self._outcomes:
            wrong = f"the dose of slot {slot_id} lies in the tray: a TAKE reaches it"
        elif reason not in PANEL_REASONS:
            wrong = f"not a reason docs/engine.md gives ({', '.join(PANEL_REASONS)})"
        elif due is not None:
            wrong = f"slot {due} is due without an outcome: a TAKE reaches it"
        elif reason == "not_bound" and not self._unbound:
            wrong = "the unit is bound"
        elif reason == "no_schedule":
            wrong = "the unit has a schedule (the centre's)"
        elif reason == "clock_untrusted" and world.clock_trusted:
            wrong = "the agent's clock is trusted"
        elif reason in ("paused", "no_dose_due") and not world.clock_trusted:
            wrong = "the agent's clock is untrusted: it cannot tell"
        elif reason == "paused":
            # the judge's own next slot (the event names none)
            after = bisect_right(self._dues, agent_now)
            upcoming = self._dues[after] if after < len(self._dues) else None
            if upcoming is None or self._paused_at(upcoming) is None:
                wrong = f"the next dose ({_iso_or_none(upcoming)}) is in no pause"
        elif reason == "no_dose_due" and next_due is None:
            wrong = "it names no next dose, and the schedule has one"
        elif reason == "no_dose_due" and next_due is not None:
            early = self.config.early_window
            if self._paused_at(next_due) is not None:
                wrong = f"the next dose ({text}) is in a pause: paused"
            elif early is not None and next_due - agent_now <= early - CHATTY_SLACK:
                wrong = f"the next dose ({text}) is within the early window ({early}) of a TAKE"
        if wrong is not None:
            self._violation("R20", f"panel_help_requested with reason {reason!r}: {wrong}")

    def _open_due_slot(self, agent_now: datetime) -> str | None:
        """R20: a slot the agent's clock shows due (by a minute) that must get an outcome and has
        none yet: a dose within reach of a TAKE (in the tray, due or held)."""
        c = self.config
        late = bisect_right(self._dues, agent_now - timedelta(minutes=1))
        for i in range(bisect_left(self._dues, agent_now - timedelta(days=1)), late):
            slot = self._slots[i]
            if (
                slot.slot_id not in self._outcomes
                and slot.slot_id not in self._optional
                and c.installed_utc <= slot.due_utc < c.expect_until_utc
                and self._paused_at(slot.due_utc) is None
            ):
                return slot.slot_id
        return None

    def _judge_panel_take(self, fields: dict[str, object]) -> None:
        """R20: a panel press taken as the dispenser's TAKE (`button_pressed`, button "panel")
        only with a dose within reach: in the tray, or a slot due (or within `early_window` of
        it) without an outcome (the judge's own slots; one it cannot place counts as in reach)."""
        world, early = self._world, self.config.early_window
        if fields.get("button") != "panel" or world is None or early is None:
            return
        if not world.clock_trusted or self._in_tray is not None or self._unbound:
            return
        now = self._require_now()
        agent_now = now - world.clock_behind + world.clock_ahead
        reach = bisect_right(self._dues, agent_now + early + timedelta(minutes=1))
        recent = bisect_left(self._dues, agent_now - timedelta(days=2))
        if all(self._slots[i].slot_id in self._outcomes for i in range(recent, reach)):
            after = bisect_right(self._dues, agent_now)
            upcoming = self._dues[after] if after < len(self._dues) else None
            self._violation(
                "R20",
                f"the panel taken as TAKE with no dose within reach (the next at "
                f"{_iso_or_none(upcoming)}, more than {early} off; none due without an outcome): "
                "it is a help call",
            )

    def repeat_answered(self, message: str, kinds: Sequence[str], commands: Sequence[str]) -> None:
        """R24: the dispenser sent `message` (a type name) again, a dose event the agent heard
        before; `kinds` are the events and `commands` the dispenser commands (type names) of the
        agent's answer to it."""
        news = sorted({k for k in kinds if k in NEWS_OF_A_DOSE})
        moves = sorted({c for c in commands if c in SACHET_COMMANDS})
        if news or moves:
            self._violation(
                "R24",
                f"{message} sent again, heard before, was answered by {', '.join(news + moves)}: "
                "a report heard before changes nothing",
            )

    def dispenser_refused(self, command: str, result: str) -> None:
        """R23: the dispenser answers `command` ("dispense", "discard", "retain") with `result`
        (a ResultCode's name, lower case; not OK, ALREADY_DONE nor BUSY), and the agent hears it."""
        self._refusals.append((command, result, self._require_now()))

    def _on_command_failed(self, fields: dict[str, object]) -> None:
        """R23: a dispenser_command_failed tells a refusal the dispenser gave."""
        command, result = fields.get("command"), fields.get("result")
        if result in ("ok", "already_done"):
            self._violation(
                "R23", f"dispenser_command_failed for {command} with result {result}: no refusal"
            )
        owed = [r for r in self._refusals if (r[0], r[1]) == (command, result)]
        if owed:
            self._refusals.remove(owed[0])

    def battery(self, pct: int) -> None:
        """R21: the dispenser's battery is at `pct` per cent now (before the agent hears it)."""
        self._battery = pct
        self._review_battery(self._require_now())

    def _review_battery(self, now: datetime) -> None:
        """R21: which battery condition the level owes a raise or a clear now."""
        for name, (raise_at, clear_at) in BATTERY_LEVELS.items():
            raised = name in self._battery_raised
            if (self._battery >= clear_at) if raised else (self._battery <= raise_at):
                self._battery_owed.setdefault(name, now)
            else:
                self._battery_owed.pop(name, None)
                self._battery_late.discard(name)

    def _judge_battery(self, now: datetime) -> None:
        """R21: a raise or clear owed is late (the bound runs while the agent is linked)."""
        since_linked = self._linked_since
        if since_linked is None:
            return
        bound = self.config.high_report_bound
        for name, since in self._battery_owed.items():
            deadline = max(since, since_linked) + bound
            if now > deadline and name not in self._battery_late:
                self._battery_late.add(name)
                raise_at, clear_at = BATTERY_LEVELS[name]
                owed = f"{name}_cleared" if name in self._battery_raised else name
                self._violation(
                    "R21",
                    f"the battery is at {self._battery} % since {_iso(since)} and no {owed} "
                    f"within {bound} ({name}: raised at <= {raise_at} %, cleared at >= "
                    f"{clear_at} %)",
                    deadline,
                )

    def _on_battery_event(self, kind: str) -> None:
        """R21: a battery condition raised or cleared: at its documented level, once."""
        name = kind.removesuffix("_cleared")
        clearing = name != kind
        raise_at, clear_at = BATTERY_LEVELS[name]
        raised = name in self._battery_raised
        wrong = (
            ("it was not raised" if not raised else None)
            if clearing
            else ("it was raised already" if raised else None)
        )
        if wrong is None and (self._battery < clear_at if clearing else self._battery > raise_at):
            wrong = f"{name} is raised at <= {raise_at} % and cleared at >= {clear_at} %"
        if wrong is not None:
            self._violation("R21", f"{kind} with the battery at {self._battery} %: {wrong}")
        if clearing:
            self._battery_raised.discard(name)
        else:
            self._battery_raised.add(name)
        self._battery_owed.pop(name, None)
        self._battery_late.discard(name)
        self._review_battery(self._require_now())

    # --- R22: few doses left ---------------------------------------------------------------------

    def _roll_low(self) -> bool | None:
        """R22: the patient's loaded roll has few sachets left (True), more or none (False); None:
        no roll of the patient's that can be read (the condition is not judged)."""
        w, c = self._world, self.config
        if w is None or w.roll_patient_ref != c.patient_ref or not w.roll_label_readable:
            return None
        if w.remaining > 0:
            # a roll no dose may be given from (expired, past its period: refused) is not judged
            label, now = w.reader, self._require_now()
            if label is None or label.roll_expiry_utc is None:
                return None
            if label.roll_expiry_utc - c.roll_expired_margin <= now + HELD_CLOCK_SLACK:
                return None
            last = label.roll_last_dose_utc
            if last is not None and last + c.sachet_time_tolerance <= now + HELD_CLOCK_SLACK:
                return None
        return 0 < w.remaining <= c.low_supply_threshold

    def _review_low_supply(self, now: datetime) -> None:
        """R22: the roll owes a raise now (few left, not raised), or no longer does."""
        if self._roll_low() and not self._low_raised:
            if self._low_owed is None:
                self._low_owed = now
        else:
            self._low_owed = None

    def _judge_low_supply(self, now: datetime) -> None:
        """R22: an owed low_supply is late (the bound runs while the agent is linked)."""
        since, linked = self._low_owed, self._linked_since
        if since is None or linked is None:
            return
        deadline = max(since, linked) + self.config.high_report_bound
        if now > deadline:
            self._low_owed = None  # judged once per episode
            w = self._world
            left = w.remaining if w is not None else "?"
            self._violation(
                "R22.level",
                f"the roll has {left} sachets left since {_iso(since)} (at most "
                f"{self.config.low_supply_threshold}) and no low_supply within "
                f"{self.config.high_report_bound}",
                deadline,
            )

    def low_supply_phantom(self) -> None:
        """R22: the dispenser is about to send a `LowSupply` that names no roll (a firmware fault):
        the agent may pass its word on at this instant."""
        self._low_phantom = self._require_now()

    def _on_low_supply_event(self, kind: str, fields: dict[str, object]) -> None:
        """R22: few doses left raised or cleared while the roll has them, or not."""
        now = self._require_now()
        low = self._roll_low()
        w = self._world
        left = w.remaining if w is not None else "?"
        if kind == "low_supply":
            self._low_raised = True
            w_empty = w is not None and w.remaining == 0
            if low is False and self._low_phantom != now:
                self._violation(
                    "R22.empty" if w_empty else "R22.level",
                    f"low_supply (remaining {fields.get('remaining')}) while the roll has "
                    f"{left} sachets left: few left is 1 to {self.config.low_supply_threshold}",
                )
        else:
            self._low_raised = False
            if low:
                self._violation(
                    "R22.level",
                    f"low_supply_cleared while the roll still has {left} sachets left (at most "
                    f"{self.config.low_supply_threshold}): cleared by a fuller or an empty roll",
                )
        self._review_low_supply(now)

    def state_damaged(self, binding: str) -> None:
        """R17: the agent restarted now and found its stored state damaged (the world says
        whether the patient binding in it can still be read: `binding` "kept", else
        "unreadable"). Until a person acknowledges the HIGH `state_unreadable` it owes (within
        the bound, latched, saying that of the binding) it gives no dose, cuts nothing, keeps
        the cassette locked and shows FAULT."""
        now = self._require_now()
        self._lockdown, self._lockdown_binding = "", binding
        self._unbound = self._unbound or binding == "unreadable"
        self._conditions[_DAMAGE_KEY] = _Condition(
            "state_unreadable",
            now,
            now + self.config.high_report_bound,
            rule="R17",
            what=f"no HIGH state_unreadable (binding {binding}) for the damaged state",
        )
        self._review_local(now)
        if self._owed_doses:
            self._review_doses(now)

    def bound(self) -> None:
        """A person bound the unit to its patient again (after the binding was lost)."""
        self._unbound = False
        now = self._require_now()
        if self._owed_doses:
            self._review_doses(now)

    def _judge_lockdown(self, what: str) -> None:
        if self._lockdown is not None:
            self._violation(
                "R17",
                f"{what} while the unit is locked down: its stored state was damaged and no "
                "person has acknowledged its state_unreadable",
            )

    def _on_state_unreadable(
        self, priority: str, fields: dict[str, object], alert_id: str | None
    ) -> None:
        if self._lockdown != "":
            self._violation("R17", "state_unreadable published with no damaged state to report")
            return
        binding = fields.get("binding")
        if priority != HIGH or alert_id is None or binding != self._lockdown_binding:
            self._violation(
                "R17",
                f"state_unreadable is {priority} with alert id {alert_id} and binding "
                f"{binding!r}: a latched HIGH alarm saying binding {self._lockdown_binding!r}",
            )
        self._conditions.pop(_DAMAGE_KEY, None)
        self._lockdown = alert_id or "?"

    def phantom(self, dispense_id: int | None) -> None:
        """The dispenser (a firmware fault, a corrupt but valid frame) is about to report a dose
        event that matches no dose the agent commanded (R10): with `dispense_id`, an id nobody
        used; None: the dose in the tray, with another sachet index. Call it only when the agent
        will hear it."""
        now = self._require_now()
        if dispense_id is not None:
            self._phantoms.add(dispense_id)
        last = self._last_phantom_report
        if last is not None and now - last <= self.config.phantom_report_interval:
            return  # the engine reports them at most that often
        linked = self._world is not None and self._world.agent_linked
        self._conditions[f"{PHANTOM} {dispense_id} {now.isoformat()}"] = _Condition(
            PHANTOM, now, self._deadline(now, linked), rule="R10"
        )

    def _on_presented_event(self, fields: dict[str, object]) -> None:
        dispense_id, slot_id = fields.get("dispense_id"), fields.get("slot_id")
        if not isinstance(dispense_id, int) or not isinstance(slot_id, str):
            return
        self._announced.setdefault(slot_id, set()).add(dispense_id)
        self._announced_slot[dispense_id] = slot_id
        self._last_announced = (slot_id, self._require_now())
        if dispense_id == self._in_tray:
            now = self._require_now()
            self._announced_at = now
            self._urgent_shown = self._late_escalation_excused = False
            self._heard_all_along = self._world is not None and self._world.agent_linked
            after = self.config.escalate_after
            self._escalate_at = now + after if after is not None else None
        shown = self._presented.get(dispense_id)
        if shown is None:
            return  # nothing physical to judge (the model never cut it)
        self._judge_named_sachet("dose_presented", fields, shown.label)
        self._count_presentation(slot_id, dispense_id, "the published dose_presented")
        slot = self._by_id.get(slot_id)
        label = shown.label
        if slot is None:
            self._violation("R4", f"dose_presented names slot {slot_id}, not in the schedule")
            return
        tolerance = self.config.sachet_time_tolerance
        if label.intended_utc is None:
            return  # R4 judged it when it was cut: no time, no slot
        gap = abs(label.intended_utc - slot.due_utc)
        # formatted only for a violation (a dose is presented ~750 times a year)
        what = "sachet packed for {} (dispense id {})".format
        if gap > tolerance:
            self._violation(
                "R4",
                f"{what(_iso(label.intended_utc), dispense_id)} presented for slot {slot_id} "
                f"due {_iso(slot.due_utc)}: "
                f"{_minutes(gap)} off, tolerance {_minutes(tolerance)}",
            )
            return
        closer = self._strictly_closer_slot(slot, label.intended_utc)
        if closer is not None:
            self._violation(
                "R4",
                f"{what(_iso(label.intended_utc), dispense_id)} presented for slot {slot_id} "
                f"due {_iso(slot.due_utc)}, but it is "
                f"packed for slot {closer.slot_id} due {_iso(closer.due_utc)}",
            )

    def _judge_given_up(self, slot: RefSlot) -> None:
        """R16: a dose not given is given up only when its window has passed by the agent's
        trusted clock (a stop that ends inside the window still lets it come)."""
        w = self._world
        if w is None or not w.clock_trusted or slot.slot_id in self._announced:
            return
        if slot.slot_id in self._presented_for:
            return
        agent_now = self._require_now() - w.clock_behind + w.clock_ahead
        window_end = slot.due_utc + self.config.dose_window
        if agent_now < window_end - GIVE_UP_SLACK:
            self._violation(
                "R16",
                f"slot {slot.slot_id} given up at {_iso(agent_now)} by the agent's clock, before "
                f"its window ends at {_iso(window_end)}: the dose may still come",
            )

    def _on_outcome(
        self, priority: str, fields: dict[str, object], alert_id: str | None = None
    ) -> None:
        slot_id, outcome = fields.get("slot_id"), fields.get("outcome")
        if not isinstance(slot_id, str) or not isinstance(outcome, str):
            self._violation("R3", f"slot_outcome without slot_id/outcome: {fields}")
            return
        if slot_id in self._outcomes:
            self._violation(
                "R3",
                f"second outcome for slot {slot_id}: {self._outcomes[slot_id]} then {outcome}",
            )
            return
        self._outcomes[slot_id] = outcome
        slot = self._by_id.get(slot_id)
        if slot is None or slot.due_utc < self.config.installed_utc:
            self._violation("R3", f"outcome {outcome} for slot {slot_id}, not in the schedule")
            return
        self._judge_outcome_report(slot, outcome, priority, fields, alert_id)
        self._judge_tray_belief(slot, outcome, fields)
        if outcome in ("missed", "refused"):
            self._judge_given_up(slot)
        dispense_id = fields.get("dispense_id")
        shown = self._presented.get(dispense_id) if isinstance(dispense_id, int) else None
        if shown is not None:
            self._judge_named_sachet(f"outcome {outcome}", fields, shown.label)
        if outcome != "missed":
            return
        linked = self._world is not None and self._world.agent_linked
        for dispense_id in sorted(self._announced.get(slot_id, ())):
            taken_at = self._taken.get(dispense_id)
            if taken_at is not None and linked:
                self._violation(
                    "R9",
                    f"missed-dose alarm ({priority}) for slot {slot_id}, whose dose (dispense id "
                    f"{dispense_id}) the patient took at {_iso(taken_at)}",
                )
        due_paused = self._paused_at(slot.due_utc)
        # Read "published while a pause is in force" in true time, R7 failed an agent whose
        # synchronised clock, stepped back an hour, did not yet show the pause's start (wide
        # world seed 318: a dose in the tray before a hospital stay missed at true 19:00, the
        # pause from 18:46, the agent's clock at 18:00). A pause is in force for the agent when
        # its trusted clock shows its start (docs/time-policy.md: the engine follows the clock).
        behind = self._world.clock_behind if self._world is not None else timedelta(0)
        now_paused = self._paused_at(self._require_now() - behind)
        if due_paused is not None or now_paused is not None:
            pause_id = due_paused or now_paused
            self._violation(
                "R7",
                f"missed-dose alarm ({priority}) for slot {slot_id} due {_iso(slot.due_utc)} "
                f"while pause {pause_id} "
                + ("covers its due time" if due_paused else "is in force"),
            )

    def _on_trip_report(self, kind: str, fields: dict[str, object]) -> None:
        """R13: the count of sachets taken along is right, and a trip is reported complete only
        when a sachet was taken along for every slot of it."""
        pause_id = fields.get("pause_id")
        if not isinstance(pause_id, str) or pause_id not in self._trips:
            return
        if pause_id in self._trip_reports:
            self._violation("R13", f"{kind} for trip {pause_id}, which was reported already")
        self._trip_reports.add(pause_id)
        start, end = self._pauses[pause_id]
        packed, heard = self._packed.get(pause_id, 0), self._packed_heard.get(pause_id, 0)
        planned = 0
        if end is not None:
            lo, hi = bisect_left(self._dues, start), bisect_left(self._dues, end)
            # a dose time a schedule update dropped (optional) needs no sachet
            planned = len(
                {s.slot_id for s in self._slots[lo:hi] if s.slot_id not in self._optional}
            )
        dispensed = fields.get("dispensed")
        if not isinstance(dispensed, int) or not heard <= dispensed <= packed:
            self._violation(
                "R13",
                f"{kind} for trip {pause_id} says {dispensed} sachets taken along, {packed} were "
                f"({heard} while the agent could hear it)",
            )
        elif kind == "travel_dispensed" and packed < planned:
            self._violation(
                "R13",
                f"travel_dispensed for trip {pause_id}: {packed} sachets taken along for its "
                f"{planned} slots (the patient lacks doses)",
            )

    def _judge_period_passed(self, slot_id: str) -> None:
        """R15: the roll's period has passed only when its leader's last dose is past (by more
        than the tolerance); a roll still holding this slot's sachet has not."""
        now, world = self._require_now(), self._world
        label = world.reader if world is not None else None
        last = label.roll_last_dose_utc if label is not None else None
        if label is None or last is None:
            return
        # Read "passed" on the agent's clock, R15 failed an agent whose synchronised clock,
        # stepped an hour ahead, showed the roll's last dose 37 min past (wide world seed 131):
        # it cannot know true time (docs/time-policy.md: the engine follows the clock)
        ahead = world.clock_ahead if world is not None else timedelta(0)
        agent_now = now + ahead
        if last >= agent_now - self.config.sachet_time_tolerance + HELD_CLOCK_SLACK:
            # a claim about a roll the agent has not yet seen taken out may stand for a moment
            # (its RollInserted comes at once): a violation if it stands for the bound
            linked = world is not None and world.agent_linked
            self._conditions[f"R15 {slot_id}"] = _Condition(
                "held_for_no_reason",
                now,
                self._deadline(now, linked),
                rule="R15",
                what=f"slot {slot_id} held for roll_period_passed, but the leader of roll "
                f"{label.roll_id} gives its last dose at {_iso(last)}",
            )

    def _on_not_taken(self, fields: dict[str, object]) -> None:
        """R12: no `dose_not_taken` for a dose before its escalation (to the accuracy of a
        trusted clock, `NOT_TAKEN_CLOCK_SLACK`)."""
        now, after, last = self._require_now(), self.config.escalate_after, self._last_announced
        if after is None or last is None or fields.get("slot_id") != last[0]:
            return
        if now + NOT_TAKEN_CLOCK_SLACK < last[1] + after:
            self._violation(
                "R12",
                f"dose_not_taken for slot {last[0]} at {_iso(now)}: its dose was announced "
                f"{_iso(last[1])}, not taken is {after} after ({last[1] + after - now} early)",
            )

    def _on_pause_reminder(self, fields: dict[str, object]) -> None:
        """R11: a reminder of a pause in force tells the centre how long it has lasted and the
        longest it may (`pause_max`), so a person can end it in time."""
        pause_id, now = fields.get("pause_id"), self._require_now()
        window = self._pauses.get(pause_id) if isinstance(pause_id, str) else None
        if window is None:
            return
        days, max_days = fields.get("days_in_force"), fields.get("max_days")
        lasted = (now - window[0]) / timedelta(days=1)
        wanted_max = self.config.pause_max / timedelta(days=1)
        if window[1] is not None or fields.get("end_utc") is not None:
            self._violation(
                "R11",
                f"pause_reminder for {pause_id}, which has an end (only an open-ended pause is "
                "reminded; one with an end is announced before it ends)",
            )
        elif (
            not isinstance(days, int | float)
            or abs(days - lasted) > REMINDER_DAYS_SLACK
            or max_days != wanted_max
        ):
            self._violation(
                "R11",
                f"pause_reminder for {pause_id} says {days} days in force of at most {max_days}; "
                f"it has lasted {lasted:.2f} days of at most {wanted_max:g}",
            )

    def _judge_tray_belief(self, slot: RefSlot, outcome: str, fields: dict[str, object]) -> None:
        """R10: an intake only when the patient lifted the dose out; no dose held back for a tray
        that has been empty (and seen by a linked agent) all along."""
        dispense_id = fields.get("dispense_id")
        if outcome == "taken" and isinstance(dispense_id, int) and dispense_id not in self._taken:
            self._violation(
                "R10",
                f"slot {slot.slot_id} settled taken, but nobody lifted its dose (dispense id "
                f"{dispense_id}) out of the tray",
            )
        reason = fields.get("reason")
        if outcome not in ("refused", "missed") or not isinstance(reason, str):
            return
        if not any(token in reason for token in TRAY_REASONS):
            return
        empty, linked = self._tray_empty_since, self._linked_since
        if empty is None or linked is None:
            return
        since = max(empty, linked)
        if since + self.config.high_report_bound <= slot.due_utc:
            self._violation(
                "R10",
                f"slot {slot.slot_id} due {_iso(slot.due_utc)} ended {outcome} ({reason}), but the "
                f"tray has been empty since {_iso(empty)} and the agent linked since "
                f"{_iso(linked)}",
            )

    # --- the end -------------------------------------------------------------------------------

    def finish(self, now: datetime) -> None:
        self.advance(now)
        missing = [s for s in self.expected_slot_ids if s not in self._outcomes]
        if missing:
            self._violation(
                "R3", f"{len(missing)} slot(s) without a published outcome, first {missing[:5]}"
            )

    def _require_now(self) -> datetime:
        if self._now is None:
            raise ValueError("advance() the judge to the true time first")
        return self._now

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.findings:
            out[f.rule] = out.get(f.rule, 0) + 1
        return dict(sorted(out.items()))

    def first_findings(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for f in self.findings:
            out.setdefault(f.rule, f"{_iso(f.at)}: {f.message}")
        return dict(sorted(out.items()))


def _iso(at: datetime) -> str:
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"


def _has(fields: dict[str, object], want: dict[str, object]) -> bool:
    return all(
        fields.get(name) in value if isinstance(value, tuple) else fields.get(name) == value
        for name, value in want.items()
    )


def _iso_or_none(at: datetime | None) -> str:
    return "no time" if at is None else _iso(at)


def _minutes(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 60:.1f} min"


def parse_rules(text: str | Iterable[str]) -> frozenset[str]:
    """ "all", "holding" (HOLDING_RULES), "none", or "R1,R3,R8.jam" -> a set of rule ids."""
    if isinstance(text, str):
        if text == "all":
            return ALL_RULES
        if text == "holding":
            return HOLDING_RULES
        if text in ("none", ""):
            return frozenset()
        text = [part.strip() for part in text.split(",") if part.strip()]
    rules = frozenset(text)
    unknown = rules - ALL_RULES - SUB_RULES
    if unknown:
        raise ValueError(
            f"unknown judge rules {sorted(unknown)}: use all, holding, none or e.g. R1,R3,R8.jam"
        )
    return rules
