"""The simulated dispenser firmware: every command's replies, per protocol SPEC section 4."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from hw.dispenser import DispenserIdentity, DispenserModel, SimRoll, make_roll
from protocol.messages import (
    FACTORY_RESET_CONFIRM,
    AlertPattern,
    BinLevel,
    ButtonId,
    ButtonPressed,
    Capabilities,
    CommandResult,
    Discard,
    Dispense,
    DosePresented,
    DoseRetained,
    DoseTaken,
    FactoryReset,
    FaultChanged,
    FaultCode,
    Feature,
    GetStatus,
    GetTime,
    Hello,
    LidChanged,
    LowSupply,
    PowerChanged,
    ResultCode,
    Retain,
    RollInserted,
    RollRemoved,
    SachetRead,
    SetAlert,
    SetLock,
    SetTime,
    Status,
    TimeReport,
)

T0 = 1_795_000_000
ROLL = make_roll("R1", "p-abc", T0, 12 * 3600, count=6, expiry_utc_s=T0 + 86400 * 30)


class FakeRtc:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def rtc() -> FakeRtc:
    return FakeRtc()


@pytest.fixture
def model(rtc: FakeRtc) -> DispenserModel:
    identity = DispenserIdentity(bin_capacity=2, low_supply_threshold=2)
    m = DispenserModel(identity, rtc)
    m.insert_roll(ROLL)
    return m


def result(replies: Sequence[object]) -> ResultCode:
    first = replies[0]
    assert isinstance(first, CommandResult)
    return first.result


def test_make_roll_derives_dose_times_and_expiry() -> None:
    roll = make_roll("R2", "p", T0, 3600, count=3)
    assert [s.intended_utc_s for s in roll.sachets] == [T0, T0 + 3600, T0 + 7200]
    assert (roll.first_dose_utc_s, roll.last_dose_utc_s) == (T0, T0 + 7200)
    assert roll.expiry_utc_s == T0 + 7200 + 30 * 86400


def test_insert_roll_reports_label_then_sachet(rtc: FakeRtc) -> None:
    m = DispenserModel(DispenserIdentity(), rtc)
    out = m.insert_roll(ROLL)
    assert out == [
        RollInserted("R1", "p-abc", 6, 0, T0, T0 + 5 * 43200, T0 + 86400 * 30),
        SachetRead("R1", 0, T0, "p-abc"),
    ]


def test_unreadable_sachet_raises_reader_fault_and_blocks_dispense(rtc: FakeRtc) -> None:
    m = DispenserModel(DispenserIdentity(), rtc)
    out = m.insert_roll(make_roll("R3", "p", T0, count=3, unreadable=[0]))
    assert out[1] == FaultChanged(FaultCode.READER, True, "sachet 0 unreadable")
    assert result(m.handle(Dispense(1, 10, 0))) is ResultCode.REJECTED
    # Discarding the unreadable sachet moves the roll on and clears the fault.
    out = m.handle(Discard(2, 11, 0))
    assert out[0] == CommandResult(2, ResultCode.OK, "")
    assert FaultChanged(FaultCode.READER, False, "") in out
    assert SachetRead("R3", 1, T0 + 43200, "p") in out


def test_hello_answers_capabilities_then_announces_the_loaded_roll(model: DispenserModel) -> None:
    model.handle(Dispense(1, 100, 0))  # the roll has moved on by one sachet
    caps, roll, sachet, level = model.handle(Hello(7, 1, "agent"))
    assert level == BinLevel(2, 0)
    assert roll == RollInserted("R1", "p-abc", 6, 1, T0, T0 + 5 * 43200, T0 + 86400 * 30)
    assert sachet == SachetRead("R1", 1, T0 + 43200, "p-abc")
    assert isinstance(caps, Capabilities)
    assert caps.req_id == 7
    assert caps.protocol_version == 1
    assert (caps.model, caps.serial_number, caps.has_rtc, caps.rtc_valid) == (
        "SIM-100",
        "SIM0001",
        True,
        True,
    )
    assert caps.rtc_utc_s == T0
    assert caps.features & Feature.RETAIN_BIN
    assert caps.features & Feature.SACHET_READER


def test_hello_without_a_roll_is_capabilities_and_the_bin_level(rtc: FakeRtc) -> None:
    caps, level = DispenserModel(DispenserIdentity(), rtc).handle(Hello(7, 1, "agent"))
    assert level == BinLevel(30, 0)
    assert isinstance(caps, Capabilities)


def test_dispense_ok_presents_dose_and_reads_next(model: DispenserModel) -> None:
    out = model.handle(Dispense(3, 100, 0))
    assert out == [
        CommandResult(3, ResultCode.OK, ""),
        DosePresented(100, 0),
        SachetRead("R1", 1, T0 + 43200, "p-abc"),
    ]
    assert model.dispensed == [(100, 0)]
    assert model.tray is not None
    assert model.tray.dispense_id == 100


def test_repeated_dispense_id_is_already_done_even_with_tray_occupied(
    model: DispenserModel,
) -> None:
    model.handle(Dispense(1, 100, 0))
    assert result(model.handle(Dispense(2, 100, 0))) is ResultCode.ALREADY_DONE
    model.take_dose()
    assert result(model.handle(Dispense(3, 100, 1))) is ResultCode.ALREADY_DONE
    assert model.dispensed == [(100, 0)]


def test_already_done_survives_reboot_but_not_factory_reset(model: DispenserModel) -> None:
    model.handle(Dispense(1, 100, 0))
    model.take_dose()
    model.reboot()
    assert result(model.handle(Dispense(2, 100, 1))) is ResultCode.ALREADY_DONE
    assert result(model.handle(Discard(3, 100, 1))) is ResultCode.ALREADY_DONE
    assert model.dispensed == [(100, 0)]
    assert model.discarded == []
    assert result(model.handle(FactoryReset(4, FACTORY_RESET_CONFIRM))) is ResultCode.OK
    assert result(model.handle(Dispense(5, 100, 1))) is ResultCode.OK
    assert model.dispensed == [(100, 0), (100, 1)]


def test_wrong_sachet_and_order(model: DispenserModel) -> None:
    assert result(model.handle(Dispense(1, 1, 1))) is ResultCode.WRONG_SACHET
    assert result(model.handle(Dispense(2, 1, 0))) is ResultCode.OK
    model.take_dose()
    assert result(model.handle(Dispense(3, 2, 0))) is ResultCode.WRONG_SACHET
    # The refused dispense_id 2 was not consumed: it still runs once with the right sachet.
    assert result(model.handle(Dispense(4, 2, 1))) is ResultCode.OK
    assert model.dispensed == [(1, 0), (2, 1)]


def test_tray_occupied(model: DispenserModel) -> None:
    model.handle(Dispense(1, 1, 0))
    assert result(model.handle(Dispense(2, 2, 1))) is ResultCode.TRAY_OCCUPIED
    assert model.take_dose() == [DoseTaken(1, 0)]
    assert model.take_dose() == []
    assert result(model.handle(Dispense(3, 2, 1))) is ResultCode.OK


def test_no_roll_and_empty(rtc: FakeRtc) -> None:
    m = DispenserModel(DispenserIdentity(low_supply_threshold=0), rtc)
    assert result(m.handle(Dispense(1, 1, 0))) is ResultCode.NO_ROLL
    m.insert_roll(make_roll("R9", "p", T0, count=1))
    out = m.handle(Dispense(2, 1, 0))
    assert out == [CommandResult(2, ResultCode.OK, ""), DosePresented(1, 0), LowSupply("R9", 0)]
    m.take_dose()
    assert result(m.handle(Dispense(3, 2, 1))) is ResultCode.EMPTY


def test_low_supply_after_cut(model: DispenserModel) -> None:
    for i in range(3):
        model.handle(Dispense(i, 100 + i, i))
        model.take_dose()
    out = model.handle(Dispense(9, 200, 3))
    assert out[-2:] == [SachetRead("R1", 4, T0 + 4 * 43200, "p-abc"), LowSupply("R1", 2)]


def test_lock_refuses_dispense_but_not_discard(model: DispenserModel) -> None:
    assert result(model.handle(SetLock(1, True))) is ResultCode.OK
    assert result(model.handle(Dispense(2, 1, 0))) is ResultCode.LOCKED
    assert result(model.handle(Discard(3, 2, 0))) is ResultCode.OK
    model.reboot()
    assert model.locked, "a reboot must not unlock a paused unit"
    model.handle(SetLock(4, False))
    assert result(model.handle(Dispense(5, 1, 1))) is ResultCode.OK


def test_jam_fault_refuses_with_jammed(model: DispenserModel) -> None:
    assert model.set_fault(FaultCode.JAM, True, "stalled") == [
        FaultChanged(FaultCode.JAM, True, "stalled")
    ]
    assert model.set_fault(FaultCode.JAM, True, "stalled") == []
    assert result(model.handle(Dispense(1, 1, 0))) is ResultCode.JAMMED
    assert result(model.handle(Discard(2, 2, 0))) is ResultCode.JAMMED
    model.set_fault(FaultCode.JAM, False)
    assert result(model.handle(Dispense(3, 1, 0))) is ResultCode.OK


def test_lid_open_refuses_cut_with_busy(model: DispenserModel) -> None:
    assert model.set_lid(True) == [LidChanged(True)]
    assert result(model.handle(Dispense(1, 1, 0))) is ResultCode.BUSY


def test_discard_and_retain_fill_the_bin(model: DispenserModel) -> None:
    out = model.handle(Discard(1, 10, 0))
    assert out[:3] == [CommandResult(1, ResultCode.OK, ""), DoseRetained(10, 0), BinLevel(2, 1)]
    model.handle(Dispense(2, 11, 1))
    out = model.handle(Retain(3, 11))
    assert out == [
        CommandResult(3, ResultCode.OK, ""),
        DoseRetained(11, 1),
        BinLevel(2, 2),
        FaultChanged(FaultCode.BIN_FULL, True, "2 doses in bin"),
    ]
    assert model.tray is None
    assert result(model.handle(Retain(4, 11))) is ResultCode.ALREADY_DONE
    assert result(model.handle(Discard(5, 12, 2))) is ResultCode.BIN_FULL
    model.handle(Dispense(6, 13, 2))
    assert result(model.handle(Retain(7, 13))) is ResultCode.BIN_FULL
    assert model.empty_bin() == [
        BinLevel(2, 0),
        FaultChanged(FaultCode.BIN_FULL, False, "bin emptied"),
    ]
    assert result(model.handle(Retain(8, 13))) is ResultCode.OK
    assert [e.dispense_id for e in model.bin] == [13]


def test_bin_level_after_the_handshake_and_only_with_the_feature(rtc: FakeRtc) -> None:
    m = DispenserModel(DispenserIdentity(bin_capacity=30), rtc)
    m.insert_roll(ROLL)
    replies = m.handle(Hello(1, 1, "agent"))
    assert replies[-1] == BinLevel(30, 0)  # after Capabilities and the roll announcement
    assert m.empty_bin() == []  # already empty: nothing changed, nothing said
    old = DispenserModel(DispenserIdentity(features=int(Feature.RETAIN_BIN)), rtc)
    old.insert_roll(ROLL)
    assert not any(isinstance(r, BinLevel) for r in old.handle(Hello(1, 1, "agent")))
    out = old.handle(Discard(2, 10, 0))
    assert not any(isinstance(r, BinLevel) for r in out)


def test_retain_with_nothing_presented(model: DispenserModel) -> None:
    assert result(model.handle(Retain(1, 5))) is ResultCode.NOTHING_PRESENTED
    model.handle(Dispense(2, 6, 0))
    assert result(model.handle(Retain(3, 5))) is ResultCode.NOTHING_PRESENTED


def test_unsupported_without_features(rtc: FakeRtc) -> None:
    m = DispenserModel(DispenserIdentity(features=0, has_rtc=False), rtc)
    assert result(m.handle(SetLock(1, True))) is ResultCode.UNSUPPORTED
    assert result(m.handle(Discard(2, 1, 0))) is ResultCode.UNSUPPORTED
    assert result(m.handle(Retain(3, 1))) is ResultCode.UNSUPPORTED
    assert result(m.handle(SetTime(4, T0))) is ResultCode.UNSUPPORTED
    assert m.handle(GetTime(5)) == [TimeReport(5, False, 0)]


def test_set_alert_status_and_reboot_clears_alert(model: DispenserModel) -> None:
    assert result(model.handle(SetAlert(1, AlertPattern.URGENT))) is ResultCode.OK
    model.set_fault(FaultCode.TAMPER, True)
    model.set_power(False, 55)
    model.handle(Dispense(2, 1, 0))
    (status,) = model.handle(GetStatus(3))
    assert status == Status(
        req_id=3,
        roll_id="R1",
        remaining=5,
        next_index=1,
        tray_occupied=True,
        lid_open=False,
        locked=False,
        mains=False,
        battery_pct=55,
        alert=AlertPattern.URGENT,
        active_faults=1 << FaultCode.TAMPER,
    )
    model.reboot()
    (status,) = model.handle(GetStatus(4))
    assert isinstance(status, Status)
    assert status.alert is AlertPattern.OFF
    assert status.tray_occupied, "the dose is still physically in the tray"


def test_time_set_get_and_dead_rtc_battery(model: DispenserModel, rtc: FakeRtc) -> None:
    assert model.handle(GetTime(1)) == [TimeReport(1, True, T0)]
    assert result(model.handle(SetTime(2, T0 + 500))) is ResultCode.OK
    rtc.now += 10
    assert model.handle(GetTime(3)) == [TimeReport(3, True, T0 + 510)]
    model.rtc_battery_died()
    assert model.handle(GetTime(4)) == [TimeReport(4, False, 0)]
    assert result(model.handle(SetTime(5, 0))) is ResultCode.BAD_ARGUMENT
    model.handle(SetTime(6, T0 + 1000))
    assert model.handle(GetTime(7)) == [TimeReport(7, True, T0 + 1000)]


def test_factory_reset_needs_confirm(model: DispenserModel) -> None:
    model.handle(SetLock(1, True))
    model.handle(SetAlert(2, AlertPattern.FAULT))
    assert result(model.handle(FactoryReset(3, 1234))) is ResultCode.BAD_ARGUMENT
    assert model.locked
    assert model.handle(FactoryReset(4, FACTORY_RESET_CONFIRM)) == [
        CommandResult(4, ResultCode.OK, "")
    ]
    assert not model.locked
    assert model.alert is AlertPattern.OFF


def test_physical_events(model: DispenserModel) -> None:
    assert model.press_button() == [ButtonPressed(ButtonId.TAKE)]
    assert model.press_button(ButtonId.HELP) == [ButtonPressed(ButtonId.HELP)]
    assert model.set_lid(False) == []
    assert model.set_power(True, 90) == [PowerChanged(True, 90)]
    with pytest.raises(ValueError, match="battery_pct"):
        model.set_power(True, 101)


def test_remove_and_reinsert_part_used_roll(model: DispenserModel) -> None:
    model.handle(Dispense(1, 1, 0))
    model.take_dose()
    assert model.remove_roll() == [RollRemoved("R1")]
    assert model.remove_roll() == []
    assert result(model.handle(Dispense(2, 2, 1))) is ResultCode.NO_ROLL
    again = model.last_removed_roll
    assert isinstance(again, SimRoll)
    assert again.next_index == 1
    out = model.insert_roll(again)
    assert isinstance(out[0], RollInserted)
    assert out[0].next_index == 1
    assert out[1] == SachetRead("R1", 1, T0 + 43200, "p-abc")
