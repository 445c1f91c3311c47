"""Rate-limited log lines for faults that can repeat without end (a noisy serial line, a flood of
oversized MQTT messages): the first of a kind in each window is logged, the rest are counted and
the count rides on the next line logged for that kind. A flood writes one line a window, not one
per fault, and nothing is hidden: the counts say how many there were.

Here, in the lowest layer, so the frame decoder, the drivers and the agent can all use it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_WINDOW_S = 60.0
_MAX_KINDS = 64  # kinds are a fixed set in practice; this keeps a bug from growing the table


@dataclass
class _Window:
    started: float
    suppressed: int = 0


class RateLimitedLog:
    """At most one line per kind per `window_s`; the suppressed count is logged with the next."""

    def __init__(
        self,
        logger: logging.Logger,
        window_s: float = DEFAULT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self._logger = logger
        self._window_s = window_s
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self.total: dict[str, int] = {}  # every occurrence, logged or not

    def log(self, level: int, kind: str, msg: str, *args: object) -> bool:
        """Log `msg % args` unless `kind` was logged within the window; True when logged."""
        self.total[kind] = self.total.get(kind, 0) + 1
        now = self._clock()
        window = self._windows.get(kind)
        if window is not None and now - window.started < self._window_s:
            window.suppressed += 1
            return False
        if window is not None and window.suppressed:
            msg += " (and %d more like this in the last %.0f s, not logged)"
            args = (*args, window.suppressed, now - window.started)
        if window is None and len(self._windows) >= _MAX_KINDS:
            self._windows.pop(next(iter(self._windows)))
        self._windows[kind] = _Window(now)
        self._logger.log(level, msg, *args)
        return True

    def warning(self, kind: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, kind, msg, *args)
