"""The exception every simulation check raises, in a module of its own: the judge
(`agent.simulation.judge`) raises it too and must not import the engine, as `invariants` does."""

from __future__ import annotations

from collections.abc import Sequence


class InvariantViolation(AssertionError):  # noqa: N818 - name fixed by the brief
    """A safety invariant broke. Carries what is needed to replay and understand it."""

    def __init__(
        self,
        message: str,
        *,
        seed: int | None = None,
        step: int | None = None,
        sim_time: str | None = None,
        recent: Sequence[str] = (),
    ) -> None:
        self.message = message
        self.seed = seed
        self.step = step
        self.sim_time = sim_time
        self.recent = tuple(recent)
        super().__init__(self._render())

    def with_context(
        self, *, seed: int, step: int, sim_time: str, recent: Sequence[str]
    ) -> InvariantViolation:
        return InvariantViolation(
            self.message, seed=seed, step=step, sim_time=sim_time, recent=recent
        )

    def _render(self) -> str:
        if self.seed is None:
            return self.message
        lines = [f"seed {self.seed}, step {self.step}, at {self.sim_time}: {self.message}"]
        if self.recent:
            lines.append(f"last {len(self.recent)} inputs/actions:")
            lines.extend(f"  {entry}" for entry in self.recent)
        return "\n".join(lines)
