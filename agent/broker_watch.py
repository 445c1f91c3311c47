"""The MQTT link's state where a technician can read it: `dispenser-agent status` reads the store,
not the daemon's memory, so the daemon keeps a small record of its broker link in the kv table
(connected or not, TLS failures since start, the last connect error). A unit that cannot reach
its broker because TLS was refused (a certificate of another CA, an expired one) then says so on
site, not only in the journal.

Written only when something a technician would read changes (connected, the error's text) and
otherwise at most once a minute, so a broker that refuses every few seconds writes little. The
watch sleeps until the link says its state moved (or a held-back count is due): an idle unit
does not wake for it.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.clock import utc_text

if TYPE_CHECKING:
    from agent.host import WatchedBroker

MQTT_LINK_KEY = "mqtt_link"
REWRITE_S = 60.0


@dataclass(frozen=True)
class BrokerLinkView:
    connected: bool
    tls_failures: int
    connect_failures: int
    last_error: str | None
    at: str

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BrokerLinkView | None:
        try:
            data = json.loads(text)
            return cls(
                connected=bool(data["connected"]),
                tls_failures=int(data["tls_failures"]),
                connect_failures=int(data["connect_failures"]),
                last_error=None if data["last_error"] is None else str(data["last_error"]),
                at=str(data["at"]),
            )
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self, host: str, port: int, agent_running: bool) -> tuple[bool, str]:
        """(fine, words) for the status report's broker line."""
        tls = f" ({self.tls_failures} TLS failures since start)" if self.tls_failures else ""
        if self.connected:
            fine, text = True, f"connected to {host}:{port}{tls}"
        elif self.last_error is None:
            fine, text = False, f"not connected yet to {host}:{port}: connecting"
        elif self.last_error.startswith("TLS"):
            fine, text = False, f"not connected: TLS refused{tls}: {self.last_error[:300]}"
        else:
            fine, text = False, f"not connected to {host}:{port}: {self.last_error[:300]}"
        if not agent_running:
            text += f" (as last seen by the agent at {self.at})"
        return fine, text


def _view(daemon: WatchedBroker) -> BrokerLinkView:
    stats = daemon.mqtt.stats
    return BrokerLinkView(
        connected=daemon.mqtt.connected,
        tls_failures=stats.tls_failures,
        connect_failures=stats.connect_failures,
        last_error=daemon.mqtt.last_connect_error,
        at=utc_text(daemon.clock.now().utc),
    )


def _record(daemon: WatchedBroker, view: BrokerLinkView) -> None:
    text = view.to_json()
    daemon.apply(
        [],
        daemon.clock.now(),
        within=lambda: daemon.store.set_kv(MQTT_LINK_KEY, text),
        cause="the broker link's state",
    )


async def watch_broker(daemon: WatchedBroker) -> None:
    """Keep the kv record current while the daemon runs (a store fault ends it, as any task)."""
    written: BrokerLinkView | None = None
    written_mono = 0.0
    while True:
        seen = daemon.mqtt.link_state_version
        view = _view(daemon)
        changed = written is None or (view.connected, view.last_error) != (
            written.connected,
            written.last_error,
        )
        counts_moved = written is not None and (
            (view.tls_failures, view.connect_failures)
            != (written.tls_failures, written.connect_failures)
        )
        held_back_s = REWRITE_S - (time.monotonic() - written_mono)
        if changed or (counts_moved and held_back_s <= 0):
            _record(daemon, view)
            written, written_mono = view, time.monotonic()
            counts_moved, held_back_s = False, REWRITE_S
        # a count held back by the minute's limit is written when the minute is up
        try:
            async with asyncio.timeout(held_back_s if counts_moved else None):
                await daemon.mqtt.wait_link_state_change(seen)
        except TimeoutError:
            pass
