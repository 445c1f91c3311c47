"""Drains the outbox to the broker: QoS 1, in sequence order, removed only on PUBACK.

Two lanes, each in sequence order:
- *live*: events stored since the current MQTT connection came up, and, on the first connection
  of this process when its first attempt succeeded, the events the process recorded while
  starting (nothing waited for a connection: a new unit's first events are news, not backlog);
- *backlog*: events that were waiting when it came up (published with `replayed: true`).
Nothing goes out before the connection's birth message (`MqttLink.wait_ready`).
Each pass hands paho the live lane first, then a slice of the backlog, keeping up to `window`
publishes in flight, so a long backlog never delays a fresh missed-dose event by more than one
slice. The response centre orders by
(unit_id, seq), never by arrival (docs/response-centre-guide.md).

A third lane serves "re-send from sequence N" commands: already-delivered events are published
again with `replayed: true` and do not change the outbox.

Nothing is lost on failure: an event whose publish was not acknowledged stays pending and is sent
again after the next connect (the receiver dedups on event_id / (unit_id, seq)).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

from agent.mqtt.link import MqttLink, NotConnected, PublishRejected
from agent.store.db import Store
from agent.store.outbox import OutboxEvent

log = logging.getLogger(__name__)

EnvelopeBuilder = Callable[[OutboxEvent, bool], bytes]
ACK_BATCH = 200  # acknowledged events marked delivered per commit while draining


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
        first_seq_of_process: int | None = None,
    ) -> None:
        self._store = store
        self._mqtt = mqtt
        self._topic = topic
        self._envelope = envelope
        self._window = window
        self._rejected_backoff_s = rejected_backoff_s
        self._wake = asyncio.Event()
        self._live_after = 0  # seqs above this were stored during the current connection
        # the first seq this process records: live on a first connection made at the first try
        self._first_seq_of_process = first_seq_of_process
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
            await self._mqtt.wait_ready()
            try:
                await self._serve_connection()
            except NotConnected:
                log.info("publisher: connection lost, unacknowledged events stay in the outbox")
            except PublishRejected as exc:
                self.stats.rejected += 1
                log.error(
                    "broker refused an event (%s); retry in %.0f s", exc, self._rejected_backoff_s
                )
                await asyncio.sleep(self._rejected_backoff_s)
            except Exception:
                # A bug (an event that does not fit the contract): keep it in the outbox, keep the
                # daemon up, and let the growing backlog in the health topic show it.
                self.stats.failures += 1
                log.exception("publishing failed; retry in %.0f s", self._rejected_backoff_s)
                await asyncio.sleep(self._rejected_backoff_s)

    async def _serve_connection(self) -> None:
        """Stream events while this connection lasts, up to `window` publishes in flight.

        Publishes are handed to paho in seq order within each lane, so the broker forwards them
        in that order; acknowledged seqs are marked delivered in batches (one commit per batch:
        few SD-card writes). Returns only by raising the first publish failure.
        """
        self._live_after = self._store.last_event_seq()  # stored before this connection: backlog
        link = self._mqtt.stats
        if (
            self._first_seq_of_process is not None
            and link.connects == 1
            and link.connect_failures == 0
        ):
            self._live_after = min(self._live_after, self._first_seq_of_process - 1)
        live_cursor, backlog_cursor = self._live_after, 0
        slots = asyncio.Semaphore(self._window)
        in_flight: set[asyncio.Task[None]] = set()
        acked: list[int] = []
        failures: list[BaseException] = []

        def settled(seq: int, counts: bool, task: asyncio.Task[None]) -> None:
            in_flight.discard(task)
            slots.release()
            if task.cancelled():
                failures.append(NotConnected("publish cancelled"))
            elif (error := task.exception()) is not None:
                failures.append(error)
            elif counts:
                acked.append(seq)
            else:
                self.stats.replayed += 1

        try:
            while not failures:
                self._wake.clear()  # before reading: a commit after this wakes us again
                live = self._store.pending_events(after_seq=live_cursor, limit=self._window)
                backlog = [
                    e
                    for e in self._store.pending_events(
                        after_seq=backlog_cursor, limit=self._window
                    )
                    if e.seq <= self._live_after
                ]
                batch = (
                    [(e, False, True) for e in live]
                    + [(e, True, True) for e in backlog]
                    + [(e, True, False) for e in self._resend_slice()]
                )
                if not batch:
                    self._mark_delivered(acked)
                    if in_flight:
                        await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    else:
                        await self._wake.wait()
                    continue
                self.stats.rounds += 1
                for event, replayed, counts in batch:
                    await slots.acquire()
                    if failures:
                        slots.release()
                        break
                    task = asyncio.create_task(
                        self._publish(event, replayed), name=f"publish-seq-{event.seq}"
                    )
                    in_flight.add(task)
                    task.add_done_callback(functools.partial(settled, event.seq, counts))
                    if not counts:
                        continue
                    if replayed:
                        backlog_cursor = event.seq
                    else:
                        live_cursor = event.seq
                if len(acked) >= ACK_BATCH:
                    self._mark_delivered(acked)
        finally:
            if in_flight:
                await asyncio.wait(set(in_flight))  # each ends quickly: acked or connection lost
            self._mark_delivered(acked)
        raise failures[0]

    def _mark_delivered(self, acked: list[int]) -> None:
        if not acked:
            return
        with self._store.transaction():
            for seq in acked:
                self._store.mark_delivered(seq)
        self.stats.published += len(acked)
        acked.clear()

    def _resend_slice(self) -> list[OutboxEvent]:
        """The next slice of a "re-send from seq N" request (best effort on one connection)."""
        if self._resend_next is None:
            return []
        events = [
            e
            for e in self._store.events_from(self._resend_next, limit=self._window)
            if e.seq <= self._resend_until
        ]
        if events:
            self._resend_next = events[-1].seq + 1
        if not events or self._resend_next > self._resend_until:
            self._resend_next = None
        return events

    async def _publish(self, event: OutboxEvent, replayed: bool) -> None:
        await self._mqtt.publish(self._topic, self._envelope(event, replayed), qos=1)
