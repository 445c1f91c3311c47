"""Repeated faults are logged at most once a window per kind, with the count of the rest: a
noisy serial line that rejects thousands of frames writes a few lines, and they say how many."""

from __future__ import annotations

import logging

import pytest

from protocol.framing import FrameDecoder
from protocol.ratelog import RateLimitedLog


def frame_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("frame rejected")]


def test_a_noisy_line_writes_one_line_per_reason_not_one_per_frame(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="protocol.framing")
    decoder = FrameDecoder()
    junk = b"\x05\x01\x02\x03\x04\x00" * 5000  # 5000 short, corrupt frames
    assert decoder.feed(junk) == []
    assert sum(decoder.rejected.values()) == 5000  # every one counted
    assert len(frame_lines(caplog)) == len(decoder.rejected)  # one line per reason


def test_the_count_of_suppressed_lines_rides_on_the_next_window() -> None:
    now = [0.0]
    logger = logging.getLogger("test.ratelog")
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Keep()
    logger.addHandler(handler)
    try:
        limited = RateLimitedLog(logger, window_s=60.0, clock=lambda: now[0])
        for _ in range(100):
            limited.warning("bad_crc", "frame rejected (%s)", "bad_crc")
            now[0] += 0.5  # 100 faults over 50 s: one window
        assert records == ["frame rejected (bad_crc)"]
        now[0] = 61.0
        assert limited.warning("bad_crc", "frame rejected (%s)", "bad_crc")
        assert records[1] == (
            "frame rejected (bad_crc) (and 99 more like this in the last 61 s, not logged)"
        )
        # Another kind has its own window.
        assert limited.warning("too_long", "frame rejected (%s)", "too_long")
        assert limited.total == {"bad_crc": 101, "too_long": 1}
    finally:
        logger.removeHandler(handler)
