"""The rig runner (hw/rig.py): `expect` lines, judging, and the scenario set in hw/scenarios/ run
end to end over a pty and over BLE (bleak's BlueZ backend against the simulator's BLE front on a
private D-Bus bus), with the production agent on a clock 60x real time and the suite's mosquitto.

Timings are reported, not asserted: the runs use `slack` 3 so a loaded machine stretches the
`within` deadlines of "at least one" expectations; counts are judged on their own windows. The
link drop also runs over a "real UART" (two ptys joined like a crossed cable, the simulator on
one through pyserial), where the line goes silent instead of hanging up: the agent takes the link
as down when a message gets no ACK after every retransmit, and opens it again (drivers/session.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import threading
import tty
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from broker import MosquittoBroker

from hw.rig import Options, Result, Seen, judge, main, run_scenario, scenario_files
from hw.rig_agent import ReleasedClock
from hw.scenario import InsertRoll, ScenarioError, SetLink, parse_scenario

SCENARIOS = Path(__file__).resolve().parents[1] / "hw" / "scenarios"
SET = ("link_drop", "missed", "taken", "wrong_roll")


# --- the format -------------------------------------------------------------------------------


def test_expect_lines_parse_with_window_fields_and_count() -> None:
    scenario = parse_scenario(
        "slot 3m\n"
        "0 insert_roll roll_id=R patient_ref=p first=slot\n"
        "4m link down\n"
        "expect slot_outcome outcome=taken after=3m within=8m\n"
        "expect link up within=10m\n"
        "expect dose_presented count=0\n"
        "end 12m\n",
        t0_utc_s=1_000_000,
    )
    assert scenario.slot_s == 180
    insert = scenario.steps[0].action
    assert isinstance(insert, InsertRoll)
    assert insert.roll.sachets[0].intended_utc_s == 1_000_180  # t0 + the slot line's 3 minutes
    assert scenario.steps[1].action == SetLink(up=False)
    first, link, none = scenario.expectations
    assert (first.subject, first.fields, first.after_s, first.within_s, first.count) == (
        "slot_outcome",
        (("outcome", "taken"),),
        180.0,
        480.0,
        None,
    )
    assert (link.subject, link.fields) == ("link", (("link", "up"),))
    assert (none.count, none.line) == (0, 6)
    assert scenario.length_s == 720


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("expect\n", "line 1: expected: expect <event kind>"),
        ("# c\nexpect slot_outcome within=soon\n", "line 2: bad duration 'soon'"),
        ("expect link sideways\n", "line 1: expect link: expected up or down"),
        ("expect slot_outcome outcome\n", "line 1: expect: expected field=value, got 'outcome'"),
        ("expect slot_outcome count=-1\n", "line 1: count must be >= 0"),
        ("expect slot_outcome after=5m within=1m\n", "line 1: expect: within=60s is before"),
        ("expect Slot-Outcome\n", "line 1: expect: bad event kind 'Slot-Outcome'"),
        ("0 insert_roll roll_id=R patient_ref=p first=slot\n", "line 1: insert_roll: first=slot"),
        ("\n\nslot soon\n", "line 3: bad duration 'soon'"),
        ("5m link sideways\n", "line 1: link: expected up or down"),
    ],
)
def test_expect_and_slot_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text)
    assert str(caught.value).startswith(message), str(caught.value)


def test_an_unknown_event_kind_is_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "typo.scenario"
    path.write_text("# typo\nexpect slot_outcom within=5m\n", encoding="utf-8")
    assert main(["--scenario", str(path), "--transport", "pty", "--broker", "127.0.0.1:1"]) == 2
    assert "line 2: expect: unknown event kind 'slot_outcom'" in capsys.readouterr().err


def _event(at_s: float, kind: str, seq: int, **data: object) -> Seen:
    # rate 1, anchor 0: arrival monotonic time == scenario time
    return Seen(at_s, kind, seq, {"kind": kind, "seq": seq, "data": data})


def _judge(
    line: str, seen: list[Seen], now_s: float, slack: float = 1.0
) -> tuple[bool | None, str]:
    [expectation] = parse_scenario(line).expectations
    verdict = judge(expectation, seen, now_s, lambda mono: mono, 1.0, 600.0, slack)
    return verdict.passed, verdict.note


def test_judging_windows_fields_counts_and_slack() -> None:
    taken = _event(300, "slot_outcome", 7, outcome="taken")
    assert _judge("expect slot_outcome outcome=taken within=6m", [taken], 301)[0] is True
    assert _judge("expect slot_outcome outcome=missed within=6m", [taken], 301)[0] is None
    passed, note = _judge("expect slot_outcome outcome=missed within=6m", [taken], 361)
    assert passed is False
    assert "saw slot_outcome outcome=taken at 5m00.0s" in note
    assert _judge("expect slot_outcome within=4m", [taken], 400) == (
        False,
        "first match at 5m00.0s, after the deadline 4m00.0s",
    )
    assert _judge("expect slot_outcome within=4m", [taken], 400, slack=2)[0] is True
    assert _judge("expect slot_outcome after=6m", [taken], 700)[0] is False
    again = _event(310, "slot_outcome", 7, outcome="taken")  # the same event resent (same seq)
    other = _event(320, "slot_outcome", 8, outcome="taken")
    assert _judge("expect slot_outcome count=1 within=6m", [taken, again], 200)[0] is None
    assert _judge("expect slot_outcome count=1 within=6m", [taken, again], 361)[0] is True
    assert _judge("expect slot_outcome count=1 within=6m", [taken, other], 361)[0] is False
    assert _judge("expect dose_presented count=0 within=6m", [taken], 361)[0] is True
    link = Seen(-5, "link", None, {"link": "up"})  # before t=0: counts as at 0
    assert _judge("expect link up within=1m", [link], 1)[0] is True


def test_the_released_clock_holds_before_t0_and_starts_t0_at_the_anchor() -> None:
    mono = [100.0]
    t0 = datetime(2026, 11, 23, 7, 56, tzinfo=UTC)
    clock = ReleasedClock(t0, rate=60.0, hold_s=240.0, mono=lambda: mono[0])
    assert clock.now().utc == t0 - timedelta(seconds=240)
    mono[0] = 130.0  # a slow start: 30 s real, held at real speed
    assert clock.scenario_s() == -210.0
    mono[0] = 1000.0  # however slow, it never reaches t0 on its own
    assert clock.scenario_s() == -120.0
    clock.release(1003.0)
    mono[0] = 1000.0  # released: the held time until the fast clock to the anchor passes it
    assert clock.scenario_s() == -120.0
    mono[0] = 1002.0
    assert clock.scenario_s() == -60.0
    mono[0] = 1003.0
    assert clock.now().utc == t0
    mono[0] = 1004.0
    assert clock.now().utc == t0 + timedelta(minutes=1)
    clock.release(5000.0)  # only the first anchor counts
    assert clock.scenario_s() == 60.0


# --- end to end --------------------------------------------------------------------------------


def _null_modem() -> tuple[str, str, Callable[[], None]]:
    """Two ptys joined like a crossed serial cable (TX to RX both ways): the agent opens one,
    the simulator the other as a real UART (pyserial). No hangup ever reaches the agent: a `link
    down` on it is a silent line, like a cut wire."""
    m1, s1 = os.openpty()
    m2, s2 = os.openpty()
    for fd in (s1, s2):
        tty.setraw(fd)
    stop = threading.Event()

    def pump() -> None:
        while not stop.is_set():
            ready, _, _ = select.select([m1, m2], [], [], 0.1)
            for src in ready:
                with contextlib.suppress(OSError):
                    os.write(m2 if src == m1 else m1, os.read(src, 4096))

    thread = threading.Thread(target=pump, name="null-modem", daemon=True)
    thread.start()

    def close() -> None:
        stop.set()
        thread.join(5)
        for fd in (m1, s1, m2, s2):
            os.close(fd)

    return os.ttyname(s1), os.ttyname(s2), close


@dataclass
class Runs:
    results: dict[tuple[str, str], Result]
    broken_exit: int
    broken_report: list[dict[str, Any]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    """Everything at once (each scenario has its own agent, simulator and unit id), so the set
    over two transports takes about as long as its longest scenario. The runs expected to fail
    get less slack: a failing "at least one" expectation waits out its stretched deadline."""
    tmp = tmp_path_factory.mktemp("rig")
    broker = MosquittoBroker(tmp / "broker")
    broker.start()
    agent_port, sim_port, close_modem = _null_modem()
    broken = tmp / "broken.scenario"
    taken = (SCENARIOS / "taken.scenario").read_text(encoding="utf-8")
    broken.write_text(
        taken.replace("outcome=taken after=4m", "outcome=missed after=4m"), encoding="utf-8"
    )
    where = ("127.0.0.1", broker.port)
    jobs: list[tuple[Path, Options]] = [
        (p, Options(t, where, slack=3.0, workdir=tmp / "runs"))
        for t in ("pty", "ble")
        for p in scenario_files(SCENARIOS)
    ]
    jobs.append(
        (
            SCENARIOS / "link_drop.scenario",
            Options(
                "uart",
                where,
                device=agent_port,
                sim_device=sim_port,
                slack=3.0,  # as the others: a loaded machine presents the dose seconds late
                workdir=tmp / "runs",
            ),
        )
    )
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), ThreadPoolExecutor(len(jobs) + 1) as pool:
            futures = [pool.submit(run_scenario, path, opts) for path, opts in jobs]
            broken_exit = pool.submit(
                main,
                [
                    *("--scenario", str(broken), "--transport", "pty"),
                    *("--slack", "2", "--json", "--broker", f"127.0.0.1:{broker.port}"),
                ],
            )
            results = [f.result(timeout=240) for f in futures]
            code = broken_exit.result(timeout=240)
        yield Runs(
            {(r.scenario, r.transport): r for r in results}, code, json.loads(out.getvalue())
        )
    finally:
        close_modem()
        broker.stop()


def _explain(result: Result) -> str:
    verdicts = "\n".join(
        f"  {v.passed} line {v.line}: {v.text} at {v.at_s} {v.note}" for v in result.expectations
    )
    return (
        f"{result.scenario} over {result.transport}: {result.error}\n{verdicts}\n"
        f"seen: {result.seen}\n{result.log_tail}"
    )


@pytest.mark.e2e
@pytest.mark.parametrize("transport", ["pty", "ble"])
@pytest.mark.parametrize("scenario", SET)
def test_each_scenario_passes_over_pty_and_ble(runs: Runs, scenario: str, transport: str) -> None:
    result = runs.results[(scenario, transport)]
    assert result.passed, _explain(result)
    assert result.expectations
    assert all(v.passed for v in result.expectations)
    # scenario time starts once the agent is up and linked, however slowly it started
    first_link = next(s for s in result.seen if s.endswith(" link up"))
    assert first_link.startswith("-"), result.seen


@pytest.mark.e2e
def test_a_broken_expectation_makes_the_runner_report_fail(runs: Runs) -> None:
    assert runs.broken_exit == 1
    [report] = runs.broken_report
    assert report["passed"] is False
    failed = [v for v in report["expectations"] if not v["passed"]]
    assert [v["text"] for v in failed] == [
        "expect slot_outcome outcome=missed after=4m within=8m"
    ], failed
    assert "saw slot_outcome outcome=taken" in failed[0]["note"]


@pytest.mark.e2e
def test_link_drop_over_a_real_uart_line(runs: Runs) -> None:
    result = runs.results[("link_drop", "uart")]
    assert result.passed, _explain(result)
