"""Tells the response centre when the MQTT link dropped inbound messages (a flood): the link
calls this at most once a minute, on the loop; it becomes an `mqtt_inbound_dropped` event."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.engine.catalogue import make_event
from agent.engine.types import Emit

if TYPE_CHECKING:
    from agent.host import Recorder

log = logging.getLogger(__name__)


def inbound_drop_reporter(daemon: Recorder) -> Callable[[int, str], None]:
    def report(count: int, topic: str) -> None:
        event = make_event("mqtt_inbound_dropped", {"count": count, "topic": topic[:200]})
        try:
            daemon.apply([Emit(event)], daemon.clock.now(), cause="a flood report")
        except Exception:  # a store fault has started the fail-safe already; a bug is logged
            log.exception("inbound drops not reported")

    return report
