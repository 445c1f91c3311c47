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

The taken path: the daemon offers the events of an engine step right after their commit
(`offer`); when they are next in the live lane and the window has room they go to the link at
once, without a read back from the store, a task or a future (each publish settles through a
callback), before the dispenser's ACK is written. Anything else waits for the next pass.

Nothing is lost on failure: an event whose publish was not acknowledged stays pending and is sent
again after the next connect (the receiver dedups on event_id / (unit_id, seq)).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.mqtt.link import MqttLinkStats, MqttNotConnected, PublishRejected
from agent.store.db import Store
from agent.store.outbox import OutboxEvent
from agent.store.writer import StoreWriter

log = logging.getLogger(__name__)

EnvelopeBuilder = Callable[[OutboxEvent, bool], bytes]
ACK_BATCH = 200  # acknowledged events marked delivered per commit while draining


class OutboxLink(Protocol):
    """The MQTT link as the publisher uses it (agent/mqtt/link.py's MqttLink)."""

    @property
    def stats(self) -> MqttLinkStats: ...

    async def wait_ready(self, timeout: float | None = None) -> None: ...  # noqa: ASYNC109

    def publish_nowait(
        self,
        topic: str,
        payload: bytes,
        on_done: Callable[[BaseException | None], None],
        *,
        qos: int = 1,
    ) -> None: ...

    def flush(self) -> None: ...


@dataclass
class PublisherStats:
    published: int = 0
    replayed: int = 0
    rejected: int = 0
    failures: int = 0
    rounds: int = 0


class _Serving:
    """One pass over one connection: publishes in flight and the first failure."""

    __slots__ = ("failure", "in_flight")

    def __init__(self) -> None:
        self.in_flight = 0
        self.failure: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        if self.failure is None:
            self.failure = error


class OutboxPublisher:
    def __init__(
        self,
        store: Store,
        mqtt: OutboxLink,
        topic: str,
        envelope: EnvelopeBuilder,
        *,
        window: int = 50,
        rejected_backoff_s: float = 5.0,
        first_seq_of_process: int | None = None,
        writer: StoreWriter | None = None,
    ) -> None:
        """`writer`: marks delivered go to the store's writer thread, not committed on the
        loop (without one, each batch commits in place)."""
        self._store = store
        self._writer = writer
        self._mqtt = mqtt
        self._topic = topic
        self._envelope = envelope
        self._window = window
        self._refill_room = max(1, window // 4)  # room in the window worth a read of the store
        self._rejected_backoff_s = rejected_backoff_s
        self._wake = asyncio.Event()
        self._live_after = 0  # seqs above this were stored during the current connection
        # the first seq this process records: live on a first connection made at the first try
        self._first_seq_of_process = first_seq_of_process
        self._resend_next: int | None = None
        self._resend_until = 0
        self._live_cursor = 0  # the last live seq handed to the link on this connection
        self._backlog_cursor = 0  # the last backlog seq handed to the link on this connection
        self._serving: _Serving | None = None  # the pass serving the current connection
        self._acked: list[int] = []  # acknowledged, not yet marked delivered
        self.stats = PublisherStats()

    def notify(self) -> None:
        """New events were committed (called by the daemon after every store transaction)."""
        self._wake.set()

    def offer(self, events: Sequence[OutboxEvent]) -> None:
        """Events the caller has just committed: handed to the link at once when they are the
        next of the live lane and the window has room (no task, no read back from the store),
        else picked up by the next pass like `notify()`. Call it only after the commit."""
        self._wake.set()
        serving = self._serving
        if serving is None or serving.failure is not None or not events:
            return
        if events[0].seq != self._live_cursor + 1 or serving.in_flight + len(events) > self._window:
            return  # not next in line (or no room): the pass reads them in order
        try:
            for event in events:
                self._send(serving, event, replayed=False, counts=True)
                self._live_cursor = event.seq
        except Exception:
            # Never into the caller's engine step: what was not handed over stays pending, and
            # the pass takes it from the store and says what went wrong (a lost connection, or
            # an event that does not fit the contract).
            log.debug("offered event left to the publisher's pass", exc_info=True)
        finally:
            self._mqtt.flush()

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
            except MqttNotConnected:
                log.info("publisher: connection lost, unacknowledged events stay in the outbox")
                # never retry without yielding: the loop must get to the link (and the timers)
                await asyncio.sleep(0)
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
        in that order; each settles through a callback (no task or future per message), and
        acknowledged seqs are marked delivered in batches (one commit per batch: few SD-card
        writes). Returns only by raising the first publish failure.
        """
        self._live_after = self._store.last_event_seq()  # stored before this connection: backlog
        link = self._mqtt.stats
        if (
            self._first_seq_of_process is not None
            and link.connects == 1
            and link.connect_failures == 0
        ):
            self._live_after = min(self._live_after, self._first_seq_of_process - 1)
        self._live_cursor, self._backlog_cursor = self._live_after, 0
        serving = _Serving()
        self._serving = serving
        try:
            while serving.failure is None:
                self._wake.clear()  # before reading: a commit or an ack after this wakes us
                if len(self._acked) >= ACK_BATCH:
                    self._mark_delivered()
                room = self._window - serving.in_flight
                # While publishes are in flight, refill only a quarter window at a time: one read
                # of the store per slice, not per acknowledgement.
                refill = room >= self._refill_room or serving.in_flight == 0
                batch = self._next_batch(room) if refill else []
                if not batch:
                    if serving.in_flight == 0:
                        self._mark_delivered()  # idle: nothing more is coming for a while
                    await self._wake.wait()
                    continue
                self.stats.rounds += 1
                try:
                    for event, replayed, counts in batch:
                        self._send(serving, event, replayed, counts)
                        if not counts:
                            continue
                        if replayed:
                            self._backlog_cursor = event.seq
                        else:
                            self._live_cursor = event.seq
                finally:
                    self._mqtt.flush()
                await asyncio.sleep(0)  # let the loop read PUBACKs (and others run) between batches
        except asyncio.CancelledError:
            self._mark_delivered()  # stopping: what is acked is marked, the rest stays pending
            raise
        except Exception as exc:  # raised below, once what was handed over has settled
            serving.fail(exc)
        finally:
            self._serving = None
        try:
            # Wait for what is still in flight: each ends quickly, acked or connection lost.
            while serving.in_flight:
                self._wake.clear()
                await self._wake.wait()
        finally:
            self._mark_delivered()
        raise serving.failure or MqttNotConnected(
            "publishing stopped"
        )  # the loop ends on a failure

    def _next_batch(self, room: int) -> list[tuple[OutboxEvent, bool, bool]]:
        """Up to `room` events: the live lane first, then the backlog, then a re-send slice;
        each entry is (event, replayed, counts toward delivery)."""
        if room <= 0:
            return []
        batch = [(e, False, True) for e in self._store.pending_events(self._live_cursor, room)]
        if len(batch) < room and self._backlog_cursor < self._live_after:
            batch += [
                (e, True, True)
                for e in self._store.pending_events(self._backlog_cursor, room - len(batch))
                if e.seq <= self._live_after
            ]
        if len(batch) < room:
            batch += [(e, True, False) for e in self._resend_slice(room - len(batch))]
        return batch

    def _send(self, serving: _Serving, event: OutboxEvent, replayed: bool, counts: bool) -> None:
        """Hand one event to the link; a failure to hand it over ends the pass."""
        try:
            self._mqtt.publish_nowait(
                self._topic,
                self._envelope(event, replayed),
                functools.partial(self._settled, serving, event.seq, counts),
                qos=1,
            )
        except MqttNotConnected as exc:
            serving.fail(exc)
            self._wake.set()
            raise
        serving.in_flight += 1

    def _settled(
        self, serving: _Serving, seq: int, counts: bool, error: BaseException | None
    ) -> None:
        """A publish's outcome (on the loop, from inside paho's read): record it, and wake the
        pass only when it has something to do: a failure, a window with room for a refill, or
        nothing left in flight (a wake per acknowledgement cost a task step each while draining)."""
        serving.in_flight -= 1
        if error is not None:
            serving.fail(error)
        elif counts:
            self._acked.append(seq)
        else:
            self.stats.replayed += 1
        if (
            serving.failure is not None
            or serving.in_flight == 0
            or self._window - serving.in_flight >= self._refill_room
        ):
            self._wake.set()

    def _mark_delivered(self) -> None:
        acked = self._acked
        if not acked:
            return
        if self._writer is None:
            _mark_delivered(acked, self._store)
            self.stats.published += len(acked)
            acked.clear()
            return
        self._acked = []
        self.stats.published += len(acked)
        # Not waited for: each seq was acknowledged by the broker already; if the process dies
        # before this commits, the events are only sent again (the centre dedups).
        self._writer.submit(functools.partial(_mark_delivered, acked), independent=True)

    def _resend_slice(self, limit: int) -> list[OutboxEvent]:
        """The next slice of a "re-send from seq N" request (best effort on one connection)."""
        if self._resend_next is None:
            return []
        events = [
            e
            for e in self._store.events_from(self._resend_next, limit=limit)
            if e.seq <= self._resend_until
        ]
        if events:
            self._resend_next = events[-1].seq + 1
        if not events or self._resend_next > self._resend_until:
            self._resend_next = None
        return events


def _mark_delivered(seqs: list[int], store: Store) -> None:
    with store.transaction():
        store.mark_delivered_many(seqs)
