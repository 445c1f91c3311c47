"""`dispenser-agent demo`: one scripted morning, live, in under a minute.

What runs, all on this machine and without root:
- an embedded MQTT broker (amqtt, pure Python) on 127.0.0.1;
- the dispenser simulator on a real pty (the same code a test rig uses);
- the real daemon (engine, SQLite store in a temporary directory, MQTT link) on a clock that
  runs `speed` times faster than real time (60x: a minute a second);
- a live view of the event stream, as the response centre receives it.

The script: the nurse first loads another patient's roll by mistake (refused, cassette locked),
then the right one; the 08:00 dose is taken two minutes after it is presented; the 08:30 dose is
not taken and is reported missed when its grace window ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
from datetime import datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from agent.centre.connect import BrokerOptions
from agent.centre.live_view import LiveView
from agent.clock import ScaledClock
from agent.config import parse_config
from agent.daemon import Daemon
from agent.demo.broker import EmbeddedBroker
from agent.runtime import unit_edges
from agent.store.db import Store
from agent.store.verify import verify_audit
from hw.dispenser import DispenserIdentity, DispenserModel, SimRoll, roll_from_dose_times
from hw.wire import SimulatorRunner
from protocol.messages import DosePresented, Message

ZONE = ZoneInfo("Europe/Oslo")
UNIT_ID = "demo-unit"
PATIENT_REF = "p-demo-7f3c"
OTHER_PATIENT_REF = "p-demo-0b1d"


def _at(day: datetime, hh: int, mm: int) -> datetime:
    return datetime.combine(day.date(), time(hh, mm), tzinfo=ZONE)


class DemoDay:
    def __init__(self, workdir: Path, broker_port: int, speed: float) -> None:
        today = datetime.now(ZONE)
        self.start = _at(today, 7, 57)
        self.clock = ScaledClock(self.start, rate=speed)
        self.speed = speed
        self.model = DispenserModel(
            DispenserIdentity(serial_number="DEMO-0001"),
            rtc_utc_s=lambda: int(self.clock.now().utc.timestamp()),
        )
        self.runner = SimulatorRunner.on_pty(self.model, link_path=workdir / "dispenser-tty")
        config = parse_config(
            {
                "unit_id": UNIT_ID,
                "state_dir": str(workdir / "state"),
                "dispenser": {"device": str(workdir / "dispenser-tty")},
                "mqtt": {  # amqtt speaks 3.1.1 only
                    "host": "127.0.0.1",
                    "port": broker_port,
                    "keepalive_s": 10,
                    "protocol": "3.1.1",
                },
                "engine": {"grace_minutes": 15, "undispensed_deadline_minutes": 20},
                "patient_ref": PATIENT_REF,
                "schedule": {
                    "version": 1,
                    "rules": [
                        {
                            "effective_from": self.start.date().isoformat(),
                            "times": ["08:00", "08:30"],
                        }
                    ],
                },
            },
            source="demo",
        )
        config.state_dir.mkdir(parents=True)
        self.store = Store.open(config.db_path)
        self.daemon = Daemon(
            config,
            clock=self.clock,
            store=self.store,
            edges=unit_edges(config),
        )
        self._presented = 0

    def roll(self, roll_id: str, patient_ref: str) -> SimRoll:
        """Two weeks of the schedule's doses (08:00 and 08:30), as the pharmacy packs them."""
        doses = [
            int(_at(self.start + timedelta(days=day), hh, mm).timestamp())
            for day in range(14)
            for hh, mm in ((8, 0), (8, 30))
        ]
        expiry = doses[-1] + 30 * 86400
        return roll_from_dose_times(roll_id, patient_ref, doses, expiry)

    async def until(self, hh: int, mm: int) -> None:
        """Sleep (in real seconds) until the demo clock shows hh:mm."""
        target = _at(self.start, hh, mm)
        remaining = (target - self.clock.now().utc).total_seconds()
        await asyncio.sleep(max(0.0, remaining / self.speed))

    def on_dispenser_message(self, message: Message) -> None:
        # The patient takes the first dose two minutes after it is presented, not the second.
        if isinstance(message, DosePresented):
            self._presented += 1
            if self._presented == 1:
                loop = self._loop
                loop.call_soon_threadsafe(
                    lambda: loop.create_task(self._take_after(timedelta(minutes=2)))
                )

    async def _take_after(self, delay: timedelta) -> None:
        await asyncio.sleep(delay.total_seconds() / self.speed)
        say("patient", "takes the dose out of the tray")
        self.runner.call(lambda model: model.take_dose())

    async def script(self, view: LiveView) -> None:
        self._loop = asyncio.get_running_loop()
        self.runner.add_listener(self.on_dispenser_message)
        # The nurse waits for the unit's green light: the dispenser link reported up.
        linked = await asyncio.to_thread(
            view.wait_for, lambda lines: any("dispenser link up" in ln for ln in lines), 15
        )
        if not linked:
            raise RuntimeError("the agent did not reach the simulated dispenser within 15 s")
        await self.until(7, 58)
        say("nurse", "loads a roll — another patient's, by mistake")
        foreign = self.roll("R-OTHER-11", OTHER_PATIENT_REF)
        self.runner.call(lambda model: model.insert_roll(foreign))
        await self.until(7, 59)
        say("nurse", "sees the red light, removes it, loads the right roll")
        right = self.roll("R-2611-07", PATIENT_REF)
        self.runner.call(lambda model: model.remove_roll())
        self.runner.call(lambda model: model.insert_roll(right))
        await self.until(8, 47)

    async def run(self, view: LiveView) -> None:
        self.runner.start()
        daemon_task = asyncio.create_task(self.daemon.run(), name="daemon")
        try:
            await self.script(view)
        finally:
            daemon_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await daemon_task
            self.runner.stop()


def say(who: str, what: str) -> None:
    print(f"   ({who}: {what})", flush=True)


async def _main(speed: float, color: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="dispenser-demo-") as tmp:
        workdir = Path(tmp)
        async with EmbeddedBroker() as broker:
            day = DemoDay(workdir, broker.port, speed)
            print(
                f"demo: simulated dispenser on {day.runner.device_path}, broker 127.0.0.1:"
                f"{broker.port}, clock {speed:g}x from {day.start:%H:%M} (Europe/Oslo)\n",
                flush=True,
            )
            view = LiveView(BrokerOptions(port=broker.port), sys.stdout, color)
            view.start()
            await asyncio.to_thread(view.wait_subscribed, 10)
            try:
                await day.run(view)
                delivered = day.store.last_event_seq()
                await asyncio.to_thread(
                    view.wait_for, lambda lines: any(f"#{delivered} " in ln for ln in lines), 5
                )
            finally:
                await asyncio.to_thread(view.stop)
            backlog = day.store.backlog()
            report = verify_audit(day.store)
            day.store.close()
            outcomes = [line for line in view.lines if "slot_outcome" in line]
            print(
                f"\ndemo done: {len(outcomes)} slot outcomes, {backlog.count} events undelivered, "
                f"audit chain {'intact' if report.ok else 'BROKEN'} "
                f"({report.records_checked} records)"
            )
            return 0 if report.ok and backlog.count == 0 else 1


def run_demo(speed: float = 60.0, color: bool = False) -> int:
    return asyncio.run(_main(speed, color))
