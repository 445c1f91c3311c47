"""The rig runner (hw/rig.py): `expect` lines, judging, and the scenario set in hw/scenarios/ run
end to end over a pty and over BLE (bleak's BlueZ backend against the simulator's BLE front on a
private D-Bus bus), with the production agent on a clock 60x real time and the suite's mosquitto.

Timings are reported, not asserted: the runs use `slack` 3 so a loaded machine stretches the
`within` deadlines of "at least one" expectations; counts are judged on their own windows.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from broker import MosquittoBroker

from hw.rig import Options, Seen, judge, main, run_scenario, scenario_files
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


# --- end to end --------------------------------------------------------------------------------


@pytest.mark.e2e
def test_the_scenario_set_passes_over_pty_and_ble_and_a_broken_expectation_fails(
    tmp_path: Path, mosquitto: MosquittoBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = scenario_files(SCENARIOS)
    assert [p.stem for p in paths] == list(SET)
    broken = tmp_path / "broken.scenario"
    taken = (SCENARIOS / "taken.scenario").read_text(encoding="utf-8")
    broken.write_text(
        taken.replace("outcome=taken after=4m", "outcome=missed after=4m"), encoding="utf-8"
    )
    broker = ("127.0.0.1", mosquitto.port)

    def options(transport: str) -> Options:
        return Options(transport, broker, slack=3.0, workdir=tmp_path / "runs")

    with ThreadPoolExecutor(max_workers=2 * len(paths) + 1) as pool:
        runs = [pool.submit(run_scenario, p, options(t)) for t in ("pty", "ble") for p in paths]
        broken_exit = pool.submit(
            main,
            [
                "--scenario",
                str(broken),
                "--transport",
                "pty",
                "--broker",
                f"127.0.0.1:{mosquitto.port}",
                "--slack",
                "3",
                "--json",
            ],
        )
        results = [run.result(timeout=180) for run in runs]
        assert broken_exit.result(timeout=180) == 1
    for result in results:
        verdicts = "\n".join(
            f"  {v.passed} line {v.line}: {v.text} at {v.at_s} {v.note}"
            for v in result.expectations
        )
        assert result.passed, (
            f"{result.scenario} over {result.transport}: {result.error}\n{verdicts}\n"
            f"seen: {result.seen}\n{result.log_tail}"
        )
        assert result.expectations
        assert all(v.passed for v in result.expectations)
    [report] = json.loads(capsys.readouterr().out)
    assert report["passed"] is False
    failed = [v for v in report["expectations"] if not v["passed"]]
    assert [v["text"] for v in failed] == [
        "expect slot_outcome outcome=missed after=4m within=8m"
    ], failed
    assert "saw slot_outcome outcome=taken" in failed[0]["note"]
