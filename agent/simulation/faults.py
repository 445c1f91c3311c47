"""A seeded plan of what goes wrong with the hardware, the link and the clock during a run.

Each fault has a start and a duration after which it clears by itself (a jam is freed, mains come
back, the link returns, NTP corrects the wall clock). Nothing is planned in the quiet tail at the
end of a run, so every slot can settle before the final invariant check.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass


class FaultKind(enum.StrEnum):
    JAM = "jam"  # cutter jams; cleared by a nurse after `duration_s`
    POWER_LOSS = "power_loss"  # mains off, battery drains; mains back after `duration_s`
    DISPENSER_REBOOT = "dispenser_reboot"  # firmware restarts: volatile state lost, new session
    LINK_DOWN = "link_down"  # serial/BLE link lost for `duration_s`
    WALL_JUMP = "wall_jump"  # wall clock steps by `amount` s, stepped back after `duration_s`
    PI_REBOOT = "pi_reboot"  # agent down for `amount` s, boots with an untrusted clock set
    # `wall_error_s` wrong; NTP syncs (a wall jump) `duration_s` after boot
    AGENT_RESTART = "agent_restart"  # the daemon restarts (watchdog), clock stays trusted


@dataclass(frozen=True, slots=True)
class Fault:
    at_s: float  # true seconds since the start of the run
    kind: FaultKind
    duration_s: float = 0.0
    amount: float = 0.0
    wall_error_s: float = 0.0


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Expected number of each fault per simulated year."""

    jam: float = 6.0
    power_loss: float = 6.0
    dispenser_reboot: float = 6.0
    link_down: float = 24.0
    wall_jump: float = 4.0
    pi_reboot: float = 6.0
    agent_restart: float = 12.0

    @classmethod
    def none(cls) -> FaultRates:
        return cls(0, 0, 0, 0, 0, 0, 0)


_YEAR_S = 365 * 86400.0


def plan_faults(
    rng: random.Random,
    duration_s: float,
    rates: FaultRates,
    quiet_head_s: float = 3600.0,
    quiet_tail_s: float = 2 * 86400.0,
) -> list[Fault]:
    """Faults in [quiet_head_s, duration_s - quiet_tail_s), sorted by start time.

    Each kind draws from the same stream in a fixed order, so the plan is a pure function of
    the seed and the arguments.
    """
    window = duration_s - quiet_tail_s - quiet_head_s
    faults: list[Fault] = []
    if window <= 0:
        return faults

    def starts(per_year: float) -> list[float]:
        if per_year <= 0:
            return []
        rate = per_year / _YEAR_S
        out: list[float] = []
        t = rng.expovariate(rate)
        while t < window:
            out.append(quiet_head_s + t)
            t += rng.expovariate(rate)
        return out

    faults.extend(
        Fault(at, FaultKind.JAM, duration_s=rng.uniform(600.0, 8 * 3600.0))
        for at in starts(rates.jam)
    )
    faults.extend(
        Fault(
            at,
            FaultKind.POWER_LOSS,
            duration_s=rng.uniform(300.0, 20 * 3600.0),
            amount=rng.choice((100.0, 80.0, 50.0)),
        )
        for at in starts(rates.power_loss)
    )
    faults.extend(Fault(at, FaultKind.DISPENSER_REBOOT) for at in starts(rates.dispenser_reboot))
    # link losses are either blips (seconds to minutes) or outages (up to hours)
    faults.extend(
        Fault(
            at,
            FaultKind.LINK_DOWN,
            duration_s=rng.choice((rng.uniform(5.0, 240.0), rng.uniform(600.0, 6 * 3600.0))),
        )
        for at in starts(rates.link_down)
    )
    faults.extend(
        Fault(
            at,
            FaultKind.WALL_JUMP,
            duration_s=rng.uniform(60.0, 4 * 3600.0),
            amount=rng.choice((-3600.0, 3600.0)),
        )
        for at in starts(rates.wall_jump)
    )
    faults.extend(
        Fault(
            at,
            FaultKind.PI_REBOOT,
            duration_s=rng.uniform(30.0, 3 * 3600.0),
            amount=rng.uniform(40.0, 300.0),
            wall_error_s=rng.choice((-7200.0, -600.0, 0.0, 900.0)),
        )
        for at in starts(rates.pi_reboot)
    )
    faults.extend(
        Fault(at, FaultKind.AGENT_RESTART, amount=rng.uniform(2.0, 30.0))
        for at in starts(rates.agent_restart)
    )
    faults.sort(key=lambda f: (f.at_s, f.kind.value))
    return faults
