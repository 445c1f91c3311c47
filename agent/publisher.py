"""Drains the outbox to the broker: QoS 1, in sequence order, removed only on PUBACK.

Two lanes, each in sequence order:
- *live*: events stored since the current MQTT connection came up;
- *backlog*: events that were waiting when it came up (published with `replayed: true`).
Every round publishes the live lane first, then a slice of the backlog, so a long backlog never
delays a fresh missed-dose event by more than one round. The response centre orders by
(unit_id, seq), never by arrival (docs/response-centre-guide.md).

A third lane serves "re-send from sequence N" commands: already-delivered events are published
again with `replayed: true` and do not change the outbox.

Nothing is lost on failure: an event whose publish was not acknowledged stays pending and is sent
again after the next connect (the receiver dedups on event_id / (unit_id, seq)).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from agent.mqtt.link import MqttLink, NotConnected, PublishRejected
from agent.store.db import Store
from agent.store.outbox import OutboxEvent

log = logging.getLogger(__name__)

EnvelopeBuilder = Callable[[OutboxEvent, bool], bytes]


@dataclass
class PublisherStats:
    published: int = 0
    replayed: int = 0
    rejected: int = 0
    failures: int = 0
    rounds: int = 0


class OutboxPublisher:
    def __init__(
        self,
        store: Store,
        mqtt: MqttLink,
        topic: str,
        envelope: EnvelopeBuilder,
        *,
        window: int = 50,
        rejected_backoff_s: float = 5.0,
    ) -> None:
        self._store = store
        self._mqtt = mqtt
        self._topic = topic
        self._envelope = envelope
        self._window = window
        self._rejected_backoff_s = rejected_backoff_s
        self._wake = asyncio.Event()
        self._live_after = 0  # seqs above this were stored during the current connection
        self._connection = -1  # the link's connect count when _live_after was set
        self._resend_next: int | None = None
        self._resend_until = 0
        self.stats = PublisherStats()

    def notify(self) -> None:
        """New events were committed (called by the daemon after every store transaction)."""
        self._wake.set()

    def resend_from(self, seq: int) -> int:
        """Queue delivered and pending events from `seq` on for re-sending; returns the end seq."""
        self._resend_next = seq
        self._resend_until = self._store.last_event_seq()
        self._wake.set()
        return self._resend_until

    async def run(self) -> None:
        while True:
            await self._mqtt.wait_connected()
            try:
                busy = await self._round()
            except NotConnected:
                log.info("publisher: connection lost, events stay in the outbox")
                continue
            except PublishRejected as exc:
                self.stats.rejected += 1
                log.error(
                    "broker refused an event (%s); retry in %.0f s", exc, self._rejected_backoff_s
                )
                await asyncio.sleep(self._rejected_backoff_s)
                continue
            if not busy:
                self._wake.clear()
                await self._wake.wait()

    async def _round(self) -> bool:
        """Publish one round; True if there may be more to do right away."""
        connects = self._mqtt.stats.connects
        if connects != self._connection:
            # First round on a new connection: whatever is stored now waited offline (backlog).
            self._connection = connects
            self._live_after = self._store.last_event_seq()
        live = self._store.pending_events(after_seq=self._live_after, limit=self._window)
        backlog = [
            e
            for e in self._store.pending_events(after_seq=0, limit=self._window)
            if e.seq <= self._live_after
        ]
        resend = self._resend_slice()
        if not live and not backlog and not resend:
            return False
        self.stats.rounds += 1
        batch = [(e, False) for e in live] + [(e, True) for e in backlog]
        results = await asyncio.gather(
            *(self._publish(event, replayed) for event, replayed in batch),
            *(self._publish(event, True) for event in resend),
            return_exceptions=True,
        )
        acked = [
            event.seq
            for (event, _), result in zip(batch, results[: len(batch)], strict=True)
            if result is None
        ]
        if acked:
            with self._store.transaction():
                for seq in acked:
                    self._store.mark_delivered(seq)
        self.stats.published += len(acked)
        if resend and all(r is None for r in results[len(batch) :]):
            self.stats.replayed += len(resend)
            self._resend_next = resend[-1].seq + 1
            if self._resend_next > self._resend_until:
                self._resend_next = None
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return True

    def _resend_slice(self) -> list[OutboxEvent]:
        if self._resend_next is None:
            return []
        events = [
            e
            for e in self._store.events_from(self._resend_next, limit=self._window)
            if e.seq <= self._resend_until
        ]
        if not events:
            self._resend_next = None
        return events

    async def _publish(self, event: OutboxEvent, replayed: bool) -> None:
        await self._mqtt.publish(self._topic, self._envelope(event, replayed), qos=1)
