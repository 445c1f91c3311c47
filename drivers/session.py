"""The dispenser session: protocol v1 over a `Transport`, kept alive for as long as the agent runs.

One connection = open the transport, a fresh `LinkEndpoint` (new random session), `Hello` ->
`Capabilities`, then a pump task that feeds received bytes to the endpoint. Everything is driven by
events: bytes arriving wake the pump, link retransmits run from a loop timer armed at the endpoint's
next deadline, requests wake on their reply future. No polling loop.

Guarantees the agent relies on:
- Acknowledge after commit (SPEC 2.6): `on_message` runs *before* the ACK bytes for that frame are
  written (received bytes are taken one frame at a time, so each ACK belongs to a known frame).
  When it returns an awaitable (the agent's commit, running off the loop), the pump awaits it
  before the ACK goes out and before the next frame is taken; meanwhile the loop runs on and
  nothing is taken from the link's output (the ACK stays where it can still be withdrawn; our own
  frames and retransmits queued meanwhile go out with it). The awaitable raising `NotStored`
  counts as `on_message` raising it.
- `on_message` raising `NotStored` means "not stored, do not acknowledge": that frame's ACK is not
  written, neither are ACKs of its retransmits on this connection, and the link stays up, so the
  agent can still command the dispenser (lock it, sound the fault alert). The dispenser keeps
  retransmitting the frame until its link layer gives up on it; a later connection (a new link
  session) accepts it afresh.
- If `on_message` raises anything else (a bug), the ACK is not written and the connection is
  dropped; the dispenser retransmits to the next connection, whose new link session accepts the
  frame afresh, so `on_message` sees it again (the agent dedups, as it must anyway).
- Replies are matched by `req_id`; several requests may be outstanding (the link sends them one at
  a time). A reply is returned unchanged: `ALREADY_DONE` for a repeated dispense_id is the
  engine's to interpret, not ours.
- A request that fails raises, never returns a made-up reply: `NotConnected`, `RequestTimeout`
  (outcome unknown: the command may still reach the dispenser), `LinkSendFailed(reason)` (the link
  gave up or the dispenser NAKed it: not delivered), `LinkLost` (the connection went down while
  waiting: outcome unknown).
- A reply that nobody waits for any more (it came after `RequestTimeout`) is counted and passed to
  `on_message`, so a late `CommandResult` is never silently lost.
- Every req_id carries the epoch of the agent process that sent it (`req_epoch`, from the daemon's
  start counter: `req_id = epoch << 12 | n`). A reply with another epoch answers a request of a
  previous agent process (killed with it in flight; the dispenser retransmits the reply to the
  successor): it is dropped quietly (debug log, counted), never matched to a request of ours and
  never passed to `on_message`.
- `SessionDown` is reported once per outage (not per reconnect attempt), `SessionUp` once per
  successful handshake. A dispenser that restarts mid-session (new link session seen) is reported as
  `SessionDown("dispenser restarted")`, re-handshaken on the same port (closing a serial port drops
  DTR, which resets many boards) and reported `SessionUp` with its new capabilities.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeAlias

from drivers.retry import DEFAULT_RECONNECT, RetryPolicy, stay_connected, worth_logging
from drivers.transport import Transport, TransportClosed, TransportError
from protocol import PROTOCOL_VERSION
from protocol.framing import DELIMITER
from protocol.link import (
    Delivered,
    Failed,
    FrameLinkStats,
    LinkConfig,
    LinkEndpoint,
    LinkEvent,
    PeerRestarted,
    Received,
)
from protocol.messages import (
    Capabilities,
    Command,
    CommandResult,
    Direction,
    GetStatus,
    GetTime,
    Hello,
    Message,
    Status,
    TimeReport,
)

log = logging.getLogger(__name__)

Reply: TypeAlias = Capabilities | CommandResult | Status | TimeReport
REPLY_TYPES: tuple[type[Reply], ...] = (Capabilities, CommandResult, Status, TimeReport)

# req_id = epoch << REQ_EPOCH_SHIFT | n, n in 1..REQ_IDS_PER_EPOCH: the epoch names the agent
# process that sent the request (SPEC 4.2: the dispenser echoes req_id, whatever it holds).
REQ_EPOCH_SHIFT = 12
REQ_EPOCHS = 15  # epochs 1..15, so a req_id is never 0 (what callers pass in)
REQ_IDS_PER_EPOCH = (1 << REQ_EPOCH_SHIFT) - 1

STOPPED = "session stopped"
# A line that swallows frames without a hangup (a cut wire, hung firmware) gives no EOF: once a
# message is given up unacknowledged after every retransmit (SPEC 2.3: five sends over 1.25 s,
# while the dispenser must ACK within 100 ms), the link is taken as down and opened again with a
# new Hello. The KeepAlive (engine, every watchdog timeout / 3) bounds how long that can go unseen.
SILENT_AFTER_UNACKED = 1


def _agent_version() -> str:
    try:
        return importlib.metadata.version("dispenser-agent")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def req_epoch_for(start: int) -> int:
    """The req_id epoch of the agent's `start`-th process start (1, 2, ...): consecutive starts
    never share one, so a reply meant for the previous process is always recognised."""
    return (start - 1) % REQ_EPOCHS + 1


def link_session_for(epoch: int, previous: int | None, rng: random.Random) -> int:
    """The link session of a new connection (SPEC 2.1): the req_id epoch in its top 4 bits, so
    two consecutive agent processes never share one, and never the previous connection's, so the
    dispenser cannot take our first frame for a retransmit of the last one it accepted."""
    low = rng.randint(0, REQ_IDS_PER_EPOCH)
    session = epoch << REQ_EPOCH_SHIFT | low
    if session == previous:
        session = epoch << REQ_EPOCH_SHIFT | (low + 1) & REQ_IDS_PER_EPOCH
    return session


def expected_reply(command: Command) -> type[Reply]:
    """The reply type the dispenser sends for `command` (SPEC 4.2)."""
    if isinstance(command, Hello):
        return Capabilities
    if isinstance(command, GetStatus):
        return Status
    if isinstance(command, GetTime):
        return TimeReport
    return CommandResult


# --- errors and reports ----------------------------------------------------------------------


class SessionError(Exception):
    """Root of the errors `DispenserSession.request` raises."""


class NotConnected(SessionError):  # noqa: N818 (names fixed by the driver API)
    """No handshaken link to the dispenser right now: the command was not sent."""


class RequestTimeout(SessionError):  # noqa: N818
    """No reply within the request timeout: the outcome is unknown."""


class LinkSendFailed(SessionError):  # noqa: N818
    """The link gave up on the command (no ACK after the retransmits, NAK, queue full)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LinkLost(SessionError):  # noqa: N818
    """The connection went down while the request waited: the outcome is unknown."""


class UnexpectedReply(SessionError):  # noqa: N818
    """A reply with our req_id but of the wrong type (a dispenser bug)."""


class HandshakeError(SessionError):
    """The dispenser answered Hello with something the agent cannot work with."""


class NotStored(Exception):  # noqa: N818 (reads as the answer it is)
    """Raised by `on_message`: the message was not stored, so it must not be acknowledged.

    The session leaves that frame (and its retransmits on this connection) unacknowledged and
    keeps the link up. Any other exception from `on_message` is a bug: the link is dropped.
    """


@dataclass(frozen=True, slots=True)
class SessionUp:
    capabilities: Capabilities


@dataclass(frozen=True, slots=True)
class SessionDown:
    reason: str


SessionReport: TypeAlias = SessionUp | SessionDown


@dataclass(frozen=True, slots=True)
class SessionStats:
    connects: int  # successful handshakes, the first one included
    reconnects: int  # successful handshakes after the first
    connect_failures: int  # failed open/handshake attempts
    outages: int  # SessionDown reports
    requests: int
    timeouts: int
    send_failures: int
    orphan_replies: int
    handler_errors: int  # on_message raised (not NotStored): frame unacknowledged, link dropped
    peer_restarts: int
    frames_rejected: int  # corrupt/invalid frames over all connections so far
    link: FrameLinkStats | None  # a copy of the current endpoint's counters
    not_stored: int = 0  # on_message raised NotStored: frame unacknowledged, link kept
    acks_withheld: int = 0  # ACKs not written for retransmits of a frame that was not stored
    stale_replies: int = 0  # replies to a previous agent process (another req_id epoch): dropped


# --- internals -------------------------------------------------------------------------------


@dataclass(eq=False)
class _Pending:
    future: asyncio.Future[Reply]
    expects: type[Reply]
    token: int | None = None


@dataclass(eq=False)
class _Connection:
    transport: Transport
    endpoint: LinkEndpoint
    peer_restarted: asyncio.Future[None]
    pump: asyncio.Task[None] | None = None
    up_since: float | None = None
    # messages in a row the dispenser never acknowledged (reset by anything it sends)
    unacked_in_a_row: int = 0
    silent: asyncio.Future[None] | None = None  # set when the line is taken as dead
    holding: bool = False  # the pump awaits a frame's commit: its ACK is not taken out yet


class _HandlerError(Exception):
    """on_message raised: the frame stays unacknowledged and the connection is dropped."""


class DispenserSession:
    def __init__(
        self,
        transport_factory: Callable[[], Transport],
        *,
        on_message: Callable[[Message], Awaitable[None] | None],
        on_link: Callable[[SessionReport], None],
        link_config: LinkConfig = LinkConfig(),  # noqa: B008 (frozen, shared safely)
        request_timeout_s: float = 2.0,
        backoff: RetryPolicy = DEFAULT_RECONNECT,
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        agent_version: str | None = None,
        req_epoch: int = 1,
    ) -> None:
        if not 1 <= req_epoch <= REQ_EPOCHS:
            raise ValueError(f"req_epoch must be 1..{REQ_EPOCHS}, got {req_epoch}")
        self._req_epoch = req_epoch
        self._transport_factory = transport_factory
        self._on_message = on_message
        self._on_link = on_link
        self._link_config = link_config
        self._request_timeout_s = request_timeout_s
        self._backoff = backoff
        self._rng = rng if rng is not None else random.Random()
        self._monotonic = monotonic
        self._agent_version = agent_version if agent_version is not None else _agent_version()
        self.capabilities: Capabilities | None = None
        self._conn: _Connection | None = None
        self._connected = False
        self._running = False
        self._pending: dict[int, _Pending] = {}
        self._req_by_token: dict[int, int] = {}
        self._next_req_id = 1
        self._timer: asyncio.TimerHandle | None = None
        self._last_report: SessionReport | None = None
        self._counts: Counter[str] = Counter()
        self._rejected_before = 0  # frames rejected by endpoints of earlier connections
        self._withheld_before = 0  # ACKs withheld by endpoints of earlier connections
        self._last_session: int | None = None  # link session of the previous connection

    # --- public -----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def stats(self) -> SessionStats:
        c = self._counts
        endpoint = self._conn.endpoint if self._conn else None
        link = None
        rejected_now = withheld_now = 0
        if endpoint is not None:
            withheld_now = endpoint.stats.acks_withheld
            link = dataclasses.replace(endpoint.stats, rejected=Counter(endpoint.stats.rejected))
            rejected_now = sum(endpoint.stats.rejected.values())
        return SessionStats(
            connects=c["connects"],
            reconnects=max(0, c["connects"] - 1),
            connect_failures=c["connect_failures"],
            outages=c["outages"],
            requests=c["requests"],
            timeouts=c["timeouts"],
            send_failures=c["send_failures"],
            orphan_replies=c["orphan_replies"],
            handler_errors=c["handler_errors"],
            peer_restarts=c["peer_restarts"],
            frames_rejected=self._rejected_before + rejected_now,
            link=link,
            not_stored=c["not_stored"],
            acks_withheld=self._withheld_before + withheld_now,
            stale_replies=c["stale_replies"],
        )

    async def run(self) -> None:
        """Keep a handshaken link to the dispenser until cancelled."""
        if self._running:
            raise RuntimeError("DispenserSession.run is already running")
        self._running = True
        try:
            # drivers.retry: one policy for both links (full-jitter backoff, one flap rule).
            await stay_connected(
                self._connect_once,
                self._serve_and_teardown,
                self._backoff,
                retry_on=(TransportError, SessionError),
                on_failure=self._on_connect_failure,
                monotonic=self._monotonic,
                what="dispenser link",
            )
        finally:
            self._running = False
            if self._conn is not None:
                await self._teardown(self._conn, STOPPED)
            self._report_down(STOPPED)

    async def request(self, command: Command) -> Reply:
        """Send `command` and return the dispenser's reply.

        The session stamps a fresh `req_id` (whatever the caller put there, conventionally 0, is
        replaced). Raises NotConnected, RequestTimeout, LinkSendFailed, LinkLost, UnexpectedReply.
        """
        if isinstance(command, Hello):
            raise ValueError("the session does the Hello handshake itself")
        conn = self._conn
        if conn is None or not self._connected:
            raise NotConnected("no link to the dispenser")
        return await self._exchange(conn, command)

    # --- connecting -------------------------------------------------------------------------

    async def _connect_once(self) -> _Connection:
        transport = self._transport_factory()
        await transport.open()
        loop = asyncio.get_running_loop()
        session = link_session_for(self._req_epoch, self._last_session, self._rng)
        self._last_session = session
        endpoint = LinkEndpoint(Direction.TO_DISPENSER, session, self._link_config)
        conn = _Connection(transport, endpoint, loop.create_future())
        self._conn = conn
        conn.pump = asyncio.create_task(self._pump(conn), name="dispenser-link-pump")
        try:
            capabilities = await self._handshake(conn)
        except BaseException:  # whatever stopped the handshake (a cancel too): torn down, re-raised
            await self._teardown(conn, None)
            raise
        self._link_up(conn, capabilities)
        return conn

    async def _handshake(self, conn: _Connection) -> Capabilities:
        reply = await self._exchange(conn, Hello(0, PROTOCOL_VERSION, self._agent_version))
        if not isinstance(reply, Capabilities):  # pragma: no cover - _exchange checks the type
            raise UnexpectedReply(f"Hello answered with {type(reply).__name__}")
        if reply.protocol_version != PROTOCOL_VERSION:
            # SPEC 4.1: an unsupported version is reported and nothing is dispensed.
            raise HandshakeError(
                f"dispenser speaks protocol v{reply.protocol_version}, agent v{PROTOCOL_VERSION}"
            )
        return reply

    def _on_connect_failure(self, attempt: int, error: Exception) -> None:
        self._counts["connect_failures"] += 1
        what = "timed out" if isinstance(error, TimeoutError) else f"{error}"
        level = logging.WARNING if worth_logging(attempt) else logging.DEBUG
        log.log(level, "dispenser connect attempt %d failed: %s", attempt, what)
        self._report_down(f"connect failed: {what}")

    def _link_up(self, conn: _Connection, capabilities: Capabilities) -> None:
        conn.up_since = self._monotonic()
        self.capabilities = capabilities
        self._connected = True
        self._counts["connects"] += 1
        log.info(
            "dispenser link up: %s %s fw %s via %s",
            capabilities.model,
            capabilities.serial_number,
            capabilities.firmware_version,
            conn.transport.description,
        )
        self._report(SessionUp(capabilities))

    async def _serve_and_teardown(self, conn: _Connection) -> None:
        await self._teardown(conn, await self._serve(conn))

    async def _serve(self, conn: _Connection) -> str:
        """Run until the connection ends; returns why. Re-handshakes after a dispenser restart."""
        assert conn.pump is not None
        if conn.silent is None:
            conn.silent = asyncio.get_running_loop().create_future()
        while True:
            await asyncio.wait(
                {conn.pump, conn.peer_restarted, conn.silent}, return_when="FIRST_COMPLETED"
            )
            if conn.pump.done():
                return self._pump_end_reason(conn.pump)
            if conn.silent.done():
                return (
                    "the dispenser acknowledged nothing after every retransmit "
                    "(line silent: cable cut or firmware hung)"
                )
            conn.peer_restarted = asyncio.get_running_loop().create_future()
            self._connected = False
            self._report_down("dispenser restarted")
            try:
                async with asyncio.timeout(self._backoff.attempt_timeout_s):
                    capabilities = await self._handshake(conn)
            except (SessionError, TimeoutError) as exc:
                return f"handshake after dispenser restart failed: {exc or 'timed out'}"
            self._link_up(conn, capabilities)

    @staticmethod
    def _pump_end_reason(pump: asyncio.Task[None]) -> str:
        if pump.cancelled():
            return "link pump cancelled"
        error = pump.exception()
        if isinstance(error, TransportClosed):
            return f"transport closed: {error}"
        if isinstance(error, _HandlerError):
            return f"event handler failed: {error}"
        log.error("link pump crashed", exc_info=error)
        return f"link pump crashed: {error!r}"

    async def _teardown(self, conn: _Connection, reason: str | None) -> None:
        """Close a connection; `reason` None means a failed attempt (reported by the retry)."""
        if self._conn is conn:
            self._conn = None
            self._connected = False
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._rejected_before += sum(conn.endpoint.stats.rejected.values())
            self._withheld_before += conn.endpoint.stats.acks_withheld
        self._fail_pending(reason or "connect attempt abandoned")
        if conn.pump is not None and not conn.pump.done():
            conn.pump.cancel()
        if conn.pump is not None:
            await asyncio.wait({conn.pump})  # unlike `await pump`, never swallows our own cancel
            if not conn.pump.cancelled():
                conn.pump.exception()  # retrieved: its reason is reported below or by the retry
        await conn.transport.close()
        if reason is not None:
            # Our own shutdown is not a fault worth a warning.
            level = logging.INFO if reason == STOPPED else logging.WARNING
            log.log(level, "dispenser link down: %s", reason)
            self._report_down(reason)

    def _fail_pending(self, reason: str) -> None:
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(LinkLost(reason))

    # --- link reports -----------------------------------------------------------------------

    def _report(self, report: SessionReport) -> None:
        self._last_report = report
        if isinstance(report, SessionDown):
            self._counts["outages"] += 1
        try:
            self._on_link(report)
        except Exception:  # the daemon's callback: its bug must not stop the session
            log.exception("on_link handler raised on %s", report)

    def _report_down(self, reason: str) -> None:
        if not isinstance(self._last_report, SessionDown):
            self._report(SessionDown(reason))

    # --- requests ---------------------------------------------------------------------------

    async def _exchange(self, conn: _Connection, command: Command) -> Reply:
        req_id = self._allocate_req_id()
        stamped = dataclasses.replace(command, req_id=req_id)
        pending = _Pending(asyncio.get_running_loop().create_future(), expected_reply(command))
        self._pending[req_id] = pending  # registered before a byte is written
        self._counts["requests"] += 1
        try:
            token, events = conn.endpoint.send(stamped, self._monotonic())
            pending.token = token
            self._req_by_token[token] = req_id
            self._after_link_step(conn, events)
            try:
                async with asyncio.timeout(self._request_timeout_s):
                    return await pending.future
            except TimeoutError:
                self._counts["timeouts"] += 1
                log.warning("no reply to %s within %.2f s", stamped, self._request_timeout_s)
                raise RequestTimeout(
                    f"no reply to {type(command).__name__} req_id {req_id} "
                    f"within {self._request_timeout_s} s"
                ) from None
        finally:
            del self._pending[req_id]
            if pending.token is not None:
                self._req_by_token.pop(pending.token, None)

    def _allocate_req_id(self) -> int:
        for _ in range(REQ_IDS_PER_EPOCH):
            n = self._next_req_id
            self._next_req_id = n % REQ_IDS_PER_EPOCH + 1
            req_id = self._req_epoch << REQ_EPOCH_SHIFT | n
            if req_id not in self._pending:
                return req_id
        raise SessionError(f"all {REQ_IDS_PER_EPOCH} req_ids are waiting for replies")

    # --- the pump, the timer and link events --------------------------------------------------

    async def _pump(self, conn: _Connection) -> None:
        try:
            while True:
                data = await conn.transport.read()
                out = bytearray()  # the ACKs (and any of our frames) for the whole read
                for piece in _frame_pieces(data):
                    # At most one frame per piece: each ACK in the output belongs to this frame.
                    events = conn.endpoint.receive_bytes(piece, self._monotonic())
                    try:
                        stored = self._handle_events(conn, events)
                        if stored is not None:
                            conn.holding = True
                            try:
                                await stored
                            finally:
                                conn.holding = False
                    except NotStored as exc:
                        self._counts["not_stored"] += 1
                        conn.endpoint.withdraw_ack()
                        log.warning("dispenser message not stored (%s): left unacknowledged", exc)
                    except Exception as exc:  # any other failure of on_message: see below
                        # Not acknowledged: the dispenser must resend what the agent could not
                        # take. What earlier frames of this read were answered with goes out.
                        conn.endpoint.take_outgoing()
                        self._write(conn, bytes(out))
                        self._counts["handler_errors"] += 1
                        log.exception("on_message raised; dropping the link without ACK")
                        raise _HandlerError(repr(exc)) from exc
                    out += conn.endpoint.take_outgoing()
                self._write(conn, bytes(out))  # the ACKs go out only now, after on_message
                self._arm_timer(conn)
        except BaseException as exc:  # however the pump ends, no request waits for ever; re-raised
            self._fail_pending(f"link pump ended: {exc!r}")
            raise

    def _after_link_step(self, conn: _Connection, events: list[LinkEvent]) -> None:
        self._handle_events(conn, events)
        self._flush(conn)
        self._arm_timer(conn)

    def _on_deadline(self, conn: _Connection) -> None:
        self._timer = None
        if conn is not self._conn:
            return
        self._after_link_step(conn, conn.endpoint.poll(self._monotonic()))

    def _arm_timer(self, conn: _Connection) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = conn.endpoint.next_deadline()
        if deadline is None or conn is not self._conn:
            return
        delay = max(0.0, deadline - self._monotonic())
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_deadline, conn)

    def _flush(self, conn: _Connection) -> None:
        if conn.holding:
            return  # the pump takes the output once the frame it holds is stored
        self._write(conn, conn.endpoint.take_outgoing())

    def _write(self, conn: _Connection, data: bytes) -> None:
        if not data:
            return
        try:
            conn.transport.write(data)
        except TransportClosed as exc:
            # The transport contract makes the pump's read fail too; it ends the connection.
            log.warning("write to %s failed: %s", conn.transport.description, exc)

    def _handle_events(self, conn: _Connection, events: list[LinkEvent]) -> Awaitable[None] | None:
        """Handle the link's events; returns what the received frame's ACK waits for (the pump
        feeds one frame at a time: at most one `Received`)."""
        stored: Awaitable[None] | None = None
        for event in events:
            if isinstance(event, Received | Delivered | PeerRestarted):
                conn.unacked_in_a_row = 0  # the dispenser is there
            if isinstance(event, Received):
                stored = self._on_received(event.message)
            elif isinstance(event, Failed):
                self._on_send_failed(event)
                if event.reason == "timeout":
                    conn.unacked_in_a_row += 1
                    if (
                        conn.unacked_in_a_row >= SILENT_AFTER_UNACKED
                        and conn.silent is not None
                        and not conn.silent.done()
                    ):
                        conn.silent.set_result(None)
            elif isinstance(event, PeerRestarted):
                if event.old_session is not None:
                    self._counts["peer_restarts"] += 1
                    log.warning(
                        "dispenser restarted: link session %04x -> %04x",
                        event.old_session,
                        event.new_session,
                    )
                    if not conn.peer_restarted.done():
                        conn.peer_restarted.set_result(None)
            elif isinstance(event, Delivered):
                log.debug("delivered %s", event.message)
        return stored

    def _on_received(self, message: Message) -> Awaitable[None] | None:
        if isinstance(message, REPLY_TYPES):
            if message.req_id >> REQ_EPOCH_SHIFT != self._req_epoch:
                self._counts["stale_replies"] += 1
                log.debug("reply to a previous agent process dropped: %s", message)
                return None
            pending = self._pending.get(message.req_id)
            if pending is None or pending.future.done():
                self._counts["orphan_replies"] += 1
                log.warning("reply nobody waits for (late or unknown req_id): %s", message)
                return self._on_message(message)
            if not isinstance(message, pending.expects):
                pending.future.set_exception(
                    UnexpectedReply(f"expected {pending.expects.__name__}, got {message}")
                )
            else:
                pending.future.set_result(message)
            return None
        return self._on_message(message)

    def _on_send_failed(self, event: Failed) -> None:
        self._counts["send_failures"] += 1
        log.warning("link failed to deliver %s: %s", event.message, event.reason)
        req_id = self._req_by_token.pop(event.token, None)
        pending = self._pending.get(req_id) if req_id is not None else None
        if pending is not None and not pending.future.done():
            pending.future.set_exception(LinkSendFailed(event.reason))


def _frame_pieces(data: bytes) -> Iterator[bytes]:
    """`data` cut after every delimiter: fed in turn to a decoder, each completes at most one
    frame (a frame is `00 COBS 00`; a partial frame stays in the decoder for the next read)."""
    start = 0
    while start < len(data):
        end = data.find(DELIMITER, start)
        if end < 0:
            yield data[start:]
            return
        yield data[start : end + 1]
        start = end + 1
