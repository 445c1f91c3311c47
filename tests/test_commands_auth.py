"""Who may command the unit (`agent.commands.authenticate`) and the warning an open-ended pause
raises (`agent.commands._warnings`), without a broker: the e2e tests drive the same path through
MQTT, these pin each refusal and each boundary. Requests are the signed test vector of
docs/response-centre-guide.md ("Signed commands"), or signed here with its key; every expected
code, time and field is written out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.clock import TimeTrust, VirtualClock
from agent.commands import CommandHandler, Refused, _warnings, authenticate
from agent.config import CommandLimits
from agent.contract.commands import CommandRequest, parse_command
from agent.contract.signing import load_public_key, sign_request
from agent.engine.types import Emit

VECTOR_SEED = bytes(range(32))
VECTOR_PUBLIC = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
VECTOR_KEY_ID = "56475aa75463474c"
KEY = Ed25519PrivateKey.from_private_bytes(VECTOR_SEED)
TRUSTED = {VECTOR_KEY_ID: load_public_key(VECTOR_PUBLIC)}
UNIT = "oslo-unit-0042"
ISSUED = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)  # the vector's issued_at
EXPIRES = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)  # the vector's expires_at


def body(**changes: object) -> dict[str, object]:
    request: dict[str, object] = {
        "command_id": "0b9d7c1e-3f4a-4c2b-9e8d-7a6b5c4d3e2f",
        "unit_id": UNIT,
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
    request.update(changes)
    return {k: v for k, v in request.items() if v is not None}


def signed(**changes: object) -> CommandRequest:
    return parse_command(json.dumps(sign_request(body(**changes), KEY)).encode())


def unsigned(**changes: object) -> CommandRequest:
    return parse_command(json.dumps(body(**changes)).encode())


def refusal(
    request: CommandRequest,
    *,
    now: datetime = ISSUED,
    trust: TimeTrust = TimeTrust.SYNCHRONISED,
    floor: datetime | None = None,
    trusted: object = TRUSTED,
) -> str | None:
    """The refusal code, or None when the command is accepted."""
    try:
        authenticate(
            request,
            unit_id=UNIT,
            trusted=trusted,  # type: ignore[arg-type]
            now_utc=now,
            trust=trust,
            floor=floor,
        )
    except Refused as refused:
        # every refusal here is final: `rejected`, never `expired` or anything softer
        return refused.code if refused.status == "rejected" else f"{refused.status}:{refused.code}"
    return None


def test_the_signed_vector_is_accepted_on_its_unit() -> None:
    assert refusal(signed()) is None


def test_a_command_for_another_unit_is_refused_signed_or_not() -> None:
    assert refusal(signed(unit_id="oslo-unit-0043")) == "wrong_unit"
    status = {"name": "request_status"}
    assert refusal(unsigned(unit_id="oslo-unit-0043", command=status)) == "wrong_unit"


def test_only_read_only_commands_may_come_unsigned() -> None:
    assert refusal(unsigned()) == "unsigned"
    assert refusal(unsigned(unit_id=None)) == "unsigned"
    assert refusal(unsigned(command={"name": "request_status"})) is None
    assert refusal(unsigned(unit_id=None, command={"name": "request_status"})) is None


def test_a_signed_command_must_name_its_unit() -> None:
    assert refusal(signed(unit_id=None)) == "wrong_unit"


def test_a_signature_by_an_unknown_key_or_over_other_bytes_is_refused() -> None:
    assert refusal(signed(), trusted={}) == "unknown_key"
    tampered = sign_request(body(), KEY)
    tampered["issued_by"] = "operator-18"  # signed as operator-17
    assert refusal(parse_command(json.dumps(tampered).encode())) == "bad_signature"


def test_issued_at_may_lead_the_units_clock_by_five_minutes_and_no_more() -> None:
    five = timedelta(minutes=5)
    assert refusal(signed(), now=ISSUED - five) is None
    assert refusal(signed(), now=ISSUED - five - timedelta(seconds=1)) == "issued_in_future"
    # the clock checked against only when it can be believed (an untrusted one is refused
    # further on, as clock_untrusted)
    far = ISSUED - timedelta(days=30)
    assert refusal(signed(), now=far, trust=TimeTrust.DISPENSER_RTC) == "issued_in_future"
    assert refusal(signed(), now=far, trust=TimeTrust.UNTRUSTED) is None


def test_a_command_issued_before_the_last_reset_is_a_replay() -> None:
    second = timedelta(seconds=1)
    assert refusal(signed(), floor=ISSUED + second) == "replayed"
    assert refusal(signed(), floor=ISSUED) is None
    assert refusal(signed(), floor=ISSUED - second) is None
    # an expired one is left for the expiry check, which names it as what it is
    assert refusal(signed(), now=EXPIRES, floor=ISSUED + second) is None
    assert refusal(signed(), now=EXPIRES - second, floor=ISSUED + second) == "replayed"


def test_an_open_ended_pause_is_accepted_with_a_warning_event() -> None:
    command = signed(
        command={"name": "pause", "pause_id": "hosp-2", "start": "2026-11-28T12:00:00Z"}
    ).command
    [warning] = _warnings(command)
    assert isinstance(warning, Emit)
    assert warning.event.kind == "pause_open_ended"
    assert warning.event.fields == {"pause_id": "hosp-2", "start_utc": "2026-11-28T12:00:00Z"}


def test_a_pause_with_an_end_raises_no_warning() -> None:
    assert _warnings(signed().command) == []


@pytest.mark.parametrize(
    ("rules", "warned"),
    [
        ([{"effective_from": "2026-12-01", "times": []}], True),
        ([{"effective_from": "2026-12-01", "times": ["08:00"]}], False),
        (
            [{"effective_from": "2026-12-01", "times": [], "weekday_times": {"mon": ["08:00"]}}],
            False,
        ),
    ],
)
def test_a_schedule_without_a_single_dose_time_is_accepted_with_a_warning(
    rules: list[dict[str, object]], warned: bool
) -> None:
    command = signed(
        command={"name": "update_schedule", "version": 7, "zone": "Europe/Oslo", "rules": rules}
    ).command
    kinds = [a.event.kind for a in _warnings(command) if isinstance(a, Emit)]
    assert kinds == (["schedule_empty"] if warned else [])


# --- a refused command: audited and reported, naming the key that signed it -------------------


class FakeStore:
    def __init__(self) -> None:
        self.audit: list[tuple[str, dict[str, object]]] = []

    def audit_append(self, kind: str, fields: dict[str, object], *stamp: str) -> None:
        self.audit.append((kind, fields))

    def command_seen(self, command_id: str) -> None:
        return None  # never answered before


class FakeDaemon:
    """What CommandHandler's refusal path uses of the daemon: its store, clock and apply()."""

    def __init__(self) -> None:
        self.store = FakeStore()
        self.clock = VirtualClock(ISSUED)
        self.config = SimpleNamespace(command_limits=CommandLimits())  # read when built
        self.applied: list[object] = []

    def stamp(self) -> tuple[str, str]:
        return ("2026-11-28T09:00:00Z", "synchronised")

    def apply(self, actions: list[object], now: object, within: Callable[[], None]) -> None:
        within()  # the audit record is written in the same transaction as the event
        self.applied.extend(actions)


@pytest.mark.parametrize(
    ("request_", "key_id"),
    [
        (signed(unit_id="oslo-unit-0043"), VECTOR_KEY_ID),  # a signed command, wrong unit
        (unsigned(), None),  # nobody signed it
    ],
)
def test_a_refused_command_is_reported_and_audited_with_the_key_that_signed_it(
    request_: CommandRequest, key_id: str | None
) -> None:
    daemon = FakeDaemon()
    handler = CommandHandler(daemon)  # type: ignore[arg-type]
    refusal = Refused("rejected", "wrong_unit", "not for this unit")
    answer, _ = handler._refuse_unauthenticated(request_, refusal, "cmd/topic", 321, "centre")
    [emit] = daemon.applied
    assert isinstance(emit, Emit)
    assert emit.event.kind == "command_unauthenticated"
    assert emit.event.fields == {
        "command_id": "0b9d7c1e-3f4a-4c2b-9e8d-7a6b5c4d3e2f",
        "name": "pause",
        "code": "wrong_unit",
        "key_id": key_id,
        "message": "not for this unit",
    }
    assert daemon.store.audit == [
        (
            "command_rejected",
            {
                "command_id": "0b9d7c1e-3f4a-4c2b-9e8d-7a6b5c4d3e2f",
                "topic": "cmd/topic",
                "source": "centre",
                "status": "rejected",
                "code": "wrong_unit",
                "key_id": key_id,
                "payload_bytes": 321,
            },
        )
    ]
    assert answer is not None
    response = json.loads(answer)
    assert (response["status"], response["error"]["code"]) == ("rejected", "wrong_unit")


# --- refusals folded into one report: told when the window closes, not at the next refusal ---


def test_folded_refusals_are_reported_when_their_window_closes_without_another_command() -> None:
    """Past the refusals told one by one, the rest are counted; the count is told when the
    window ends (a timer), even if no command comes after them to notice the end."""
    clock = [0.0]
    daemon = FakeDaemon()
    handler = CommandHandler(daemon, monotonic=lambda: clock[0])  # type: ignore[arg-type]

    async def fold_then_wait() -> list[object]:
        for n in range(5):  # the default window answers 5 on their own
            assert handler._folded("unsigned", f"id-{n}") is False
        clock[0] = 59.99  # the window (60 s from the first) ends 10 ms after the next one
        assert handler._folded("unsigned", "id-5") is True
        assert daemon.applied == []  # counted, not told yet
        for _ in range(500):  # at most 5 s; the window's timer fires after 10 ms
            if daemon.applied:
                break
            await asyncio.sleep(0.01)
        return daemon.applied

    [emit] = asyncio.run(fold_then_wait())
    assert isinstance(emit, Emit)
    assert emit.event.kind == "commands_refused_in_bulk"
    assert emit.event.fields["total"] == 1
    assert [kind for kind, _ in daemon.store.audit] == ["commands_refused_in_bulk"]
