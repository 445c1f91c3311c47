"""Run a `DispenserModel` behind a real link: a pty pair (tests, demo) or a UART (rigs).

One daemon thread per runner owns the port, the `LinkEndpoint` and the model. It sleeps in
`select()` on the port and a wake-up pipe, with a timeout that is exactly the next link deadline
(retransmit), delayed-ACK release or agent-silence deadline (SPEC 4.7): no polling loop, no fixed
sleeps. Other threads reach the model only through `call()` (run inside the sim thread) and observe
it through `snapshot()`, `stats()` and `wait_for()` (a Condition notified after every change).

Wire-level faults (`WireFaults`) are applied frame by frame between the link and the port, so the
agent's side sees exactly what a flaky cable would give it.

The agent watchdog: every DATA frame from the agent that the link ACKs (a duplicate too) is noted
on the model (`note_agent_frame`) with the runner's `clock`, before its message is handled; the
model's `agent_silence_deadline()` is one of the deadlines the thread wakes at. While unplugged the
firmware is off, so its silence timer does not run (a replug boots it, and the timer restarts).

Events the agent never acknowledged (SPEC 2.7): an event the link gave up on (or that was still
unsent when the firmware rebooted) is kept, like a firmware keeps it in non-volatile memory, and
sent again right after the `Capabilities` that answers the next `Hello`, so a `DoseTaken` during an
outage is not lost. Replies are not kept: they answer a request of an agent that has moved on.

Defects (`DEFECTS`, `python -m hw.sim pty --defect NAME`): deliberately broken firmware, so the
conformance kit (`python -m hw.conform`) can be seen failing on the clause each one breaks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import random
import select
import threading
import time
import tty
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cobs import cobs

from hw.dispenser import DispenserModel, ModelSnapshot
from protocol.errors import DecodeError
from protocol.framing import MAX_STUFFED, Frame, FrameKind, crc16, decode_stuffed
from protocol.link import Failed, FrameLinkStats, LinkConfig, LinkEndpoint, LinkEvent, PeerRestarted
from protocol.link import Received as LinkReceived
from protocol.messages import (
    Capabilities,
    CommandResult,
    Direction,
    Dispense,
    DosePresented,
    DoseRetained,
    DoseTaken,
    Hello,
    Message,
    ResultCode,
    Status,
    TimeReport,
    decode_message,
)

log = logging.getLogger(__name__)

# SPEC 2.7: the events kept for the next Hello; the oldest that is not a dose outcome goes first
KEPT_EVENTS_MAX = 32
DOSE_OUTCOMES = (DosePresented, DoseTaken, DoseRetained)
REPLIES = (Capabilities, CommandResult, Status, TimeReport)

# Deliberately broken firmware, each far beyond the bound it breaks (never a near miss that a
# loaded machine could blur): the clause of SPEC.md the conformance kit must fail on.
DEFECTS: dict[str, str] = {
    "late_ack": "2.3",  # every ACK 2 s late (the bound is 100 ms; the sender retransmits at 250)
    "oversize_frame": "1.1",  # a 250-byte payload after each Capabilities (the cap is 240)
    "reused_session": "2.1",  # the same link session after a reboot
    "no_resend": "2.7",  # events the agent never acknowledged are dropped, not re-sent on Hello
    "wrong_precedence": "4.4",  # LOCKED checked before ALREADY_DONE
    "late_reply": "4.2",  # Dispense answered only 5 s later, once the dose is in the tray
}
LATE_ACK_S = 2.0
LATE_REPLY_S = 5.0

JOB_TIMEOUT_S = 5.0  # bound on waiting for the sim thread to run a job
JOIN_TIMEOUT_S = 5.0
READ_CHUNK = 4096


@dataclass
class WireFaults:
    """Wire-level fault injection; counters are consumed as the faults fire."""

    drop_next_frames: int = 0  # frames written by the sim that are silently not written
    corrupt_next_frames: int = 0  # flip a CRC byte in the next N frames written
    duplicate_next_frames: int = 0  # write the next N DATA frames twice
    ack_delay_s: float = 0.0  # hold the sim's ACKs back this long (the agent retransmits)
    garbage_before_next: bytes = b""  # raw noise written before the next frame
    drop_incoming_frames: int = 0  # DATA frames from the agent the sim "does not hear"


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One frame (or run of noise) crossing the wire, for logs and the CLI."""

    direction: str  # "in" (agent -> sim) or "out" (sim -> agent)
    frame: Frame | None  # None: bytes that are not a frame
    message: Message | None  # the decoded DATA payload, when it decodes
    note: str  # "", or what happened: dropped, corrupted, duplicated, delayed, garbage, rejected
    raw: bytes


@dataclass(frozen=True, slots=True)
class RunnerStats:
    session: int
    sessions: int  # link sessions so far (a new one per reboot/replug)
    plugged: bool
    frames_in: int
    frames_out: int
    retransmits: int
    duplicates: int  # retransmitted agent frames recognised and not handled twice
    naks_sent: int
    failures: int  # sim messages the agent never acknowledged
    rejected: dict[str, int]  # corrupt input by reason
    commands: int  # commands handed to the model
    dropped_out: int
    corrupted_out: int
    duplicated_out: int
    delayed_acks: int
    garbage_bytes: int
    dropped_in: int
    lost_unplugged: int  # messages the model emitted while unplugged (firmware off)
    idle: bool = True  # nothing in flight or queued on the link (all delivered or given up)


@dataclass
class _WireCounters:
    commands: int = 0
    dropped_out: int = 0
    corrupted_out: int = 0
    duplicated_out: int = 0
    delayed_acks: int = 0
    garbage_bytes: int = 0
    dropped_in: int = 0
    lost_unplugged: int = 0


class _Port(Protocol):
    @property
    def fd(self) -> int: ...

    @property
    def name(self) -> str: ...

    def close(self) -> None: ...


class _PtyPort:
    """The master side of a fresh pty pair; the slave is what the agent opens."""

    def __init__(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master = master
        # Holding a slave fd open keeps the master readable (no EIO) while the agent is not
        # connected, and keeps the raw termios settings in place for whoever opens the path.
        self._holder = slave
        self._name = os.ttyname(slave)

    @property
    def fd(self) -> int:
        return self._master

    @property
    def name(self) -> str:
        return self._name

    def close(self) -> None:
        for fd in (self._master, self._holder):
            with contextlib.suppress(OSError):
                os.close(fd)


class _UartPort:
    def __init__(self, device: str, baudrate: int) -> None:
        import serial  # only rigs need pyserial here

        self._serial = serial.Serial(device, baudrate=baudrate, timeout=0)
        os.set_blocking(self._serial.fileno(), False)
        self._name = device

    @property
    def fd(self) -> int:
        fd: int = self._serial.fileno()
        return fd

    @property
    def name(self) -> str:
        return self._name

    def close(self) -> None:
        self._serial.close()


@dataclass
class _Job:
    fn: Callable[[], None]
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


def _new_session(old: int | None) -> int:
    rng = random.SystemRandom()
    while True:
        session = rng.randint(1, 0xFFFF)
        if session != old:
            return session


def _split_frames(data: bytes) -> list[bytes]:
    """The stuffed bodies of the frames in a write from the link (each is `00 body 00`)."""
    return [part for part in data.split(b"\x00") if part]


def _oversize_frame(session: int) -> bytes:
    """A DATA frame (ButtonPressed type) whose payload is 250 bytes: above the 240 allowed."""
    body = bytes((1, 1, session >> 8, session & 0xFF, 0xEE, 0x48, 250)) + b"\x01" * 250
    stuffed: bytes = cobs.encode(body + crc16(body).to_bytes(2, "big"))
    return b"\x00" + stuffed + b"\x00"


def _corrupt(stuffed: bytes) -> bytes:
    raw = bytearray(cobs.decode(stuffed))
    raw[-1] ^= 0xFF  # the CRC's low byte: the frame is intact COBS with a bad CRC
    encoded: bytes = cobs.encode(bytes(raw))
    return encoded


def _describe(stuffed: bytes) -> tuple[Frame | None, Message | None, str]:
    try:
        frame = decode_stuffed(stuffed)
    except DecodeError as exc:
        return None, None, f"rejected:{exc.reason}"
    if frame.kind is not FrameKind.DATA:
        return frame, None, ""
    try:
        return frame, decode_message(frame.code, frame.payload), ""
    except DecodeError as exc:
        return frame, None, f"bad_payload:{exc.reason}"


class SimulatorRunner:
    """The simulated dispenser on a port. Create with `on_pty()` or `on_uart()`, then `start()`."""

    def __init__(
        self,
        model: DispenserModel,
        open_port: Callable[[], _Port],
        *,
        link_path: Path | None = None,
        replug_supported: bool = True,
        link_config: LinkConfig | None = None,
        trace: Callable[[TraceEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        defects: frozenset[str] = frozenset(),
    ) -> None:
        unknown = defects - DEFECTS.keys()
        if unknown:
            raise ValueError(f"unknown defects {sorted(unknown)}: one of {sorted(DEFECTS)}")
        self.defects = defects
        model.defects = defects
        self.model = model  # touch only through call()/wait_for() once started
        self._open_port = open_port
        self._link_path = link_path
        self._replug_supported = replug_supported
        self._link_config = link_config or LinkConfig()
        self._trace = trace
        self._clock = clock
        self._cond = threading.Condition(threading.RLock())
        self._faults = WireFaults(ack_delay_s=LATE_ACK_S if "late_ack" in defects else 0.0)
        self._kept: list[Message] = []  # SPEC 2.7: events to send again after the next Hello
        self._late_replies: list[tuple[float, Message]] = []  # the late_reply defect
        self._raw_out = bytearray()  # bytes written after the link's frames (oversize_frame)
        self._counters = _WireCounters()
        self._retired = FrameLinkStats()
        self._sessions = 1
        self._link = LinkEndpoint(Direction.TO_AGENT, _new_session(None), self._link_config)
        self._listeners: list[Callable[[Message], None]] = []
        self._jobs: deque[_Job] = deque()
        self._rx = bytearray()
        self._rx_skip = False  # inside an oversize run from the agent: skip to the next 0x00
        self._tx = bytearray()
        self._delayed: list[tuple[float, bytes]] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False
        self._link_held = False
        self._thread_error: BaseException | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._port: _Port | None = None
        self._device_name = ""
        try:
            self._plug()
        except BaseException:  # whatever stopped it: no descriptor is leaked; re-raised
            self._close_fds()
            raise

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def on_pty(
        cls,
        model: DispenserModel,
        link_path: Path | None = None,
        *,
        link_config: LinkConfig | None = None,
        trace: Callable[[TraceEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        defects: frozenset[str] = frozenset(),
    ) -> SimulatorRunner:
        """A pty pair; `device_path` is `link_path` (a symlink re-pointed on replug) if given,
        else the slave's own /dev/pts/N (which changes on replug).

        `clock`: the firmware's monotonic time (link timers, agent watchdog). A test may pass one
        it moves forward, and then calls `clock_changed()`."""
        if link_path is not None and link_path.exists() and not link_path.is_symlink():
            raise FileExistsError(f"{link_path} exists and is not a symlink")
        return cls(
            model,
            _PtyPort,
            link_path=link_path,
            link_config=link_config,
            trace=trace,
            clock=clock,
            defects=defects,
        )

    @classmethod
    def on_uart(
        cls,
        model: DispenserModel,
        device: str,
        baudrate: int = 115200,
        *,
        link_config: LinkConfig | None = None,
        trace: Callable[[TraceEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        defects: frozenset[str] = frozenset(),
    ) -> SimulatorRunner:
        """A real serial device (a rig: the sim on one USB-UART, the agent on the other)."""
        return cls(
            model,
            lambda: _UartPort(device, baudrate),
            replug_supported=False,
            link_config=link_config,
            trace=trace,
            clock=clock,
            defects=defects,
        )

    @property
    def device_path(self) -> str:
        """Where the agent opens the dispenser."""
        with self._cond:
            return str(self._link_path) if self._link_path is not None else self._device_name

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            if self._thread is not None or self._closed:
                raise RuntimeError("runner already started or stopped")
            self._thread = threading.Thread(target=self._run, name="dispenser-sim", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread (bounded join), close every fd, remove the symlink. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._stopping = True
            thread = self._thread
        self._wake()
        if thread is not None:
            thread.join(JOIN_TIMEOUT_S)
            if thread.is_alive():
                log.error("simulator thread did not stop within %.1f s", JOIN_TIMEOUT_S)
        with self._cond:
            self._unplug_locked()
            self._close_fds()
            self._closed = True
            self._cond.notify_all()

    def __enter__(self) -> SimulatorRunner:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- actions from other threads -----------------------------------------------------------

    def call(self, fn: Callable[[DispenserModel], list[Message]]) -> None:
        """Run a physical action on the model in the sim thread and send what it emits.

        Blocks until done (bounded). Called from a listener, i.e. inside the sim thread, it is
        queued to run right after the messages being processed and returns at once.
        """

        def job() -> None:
            for message in fn(self.model):
                self._emit(message)

        self._submit(job)

    def set_faults(self, **changes: int | float | bytes) -> None:
        """Change wire faults, e.g. `set_faults(drop_incoming_frames=1)`."""
        with self._cond:
            self._faults = dataclasses.replace(self._faults, **changes)  # type: ignore[arg-type]
        self._wake()

    def set_link(self, up: bool) -> None:
        """The scenario action `link down|up`: on a pty the cable is pulled / plugged back
        (`unplug`/`replug`); on a UART, where the runner cannot pull a wire, the firmware stops
        sending and hearing (the agent sees silence, as with a cut wire) and resumes."""
        if self._replug_supported:
            if up:
                self.replug()
            else:
                self.unplug()
            return
        self.hold_link(not up)
        self.set_faults(drop_incoming_frames=0 if up else 1 << 30)

    def hold_link(self, held: bool) -> None:
        """No connection to send on (BLE, between connections): the link's retransmit timers stand
        still, so an outage does not use up the retries of the frames waiting in it; released,
        they are resent at once (SPEC, "GATT profile"). The agent watchdog keeps running.

        Takes no lock (a bool is set atomically): callable from a thread the sim thread waits on."""
        self._link_held = held
        self._wake()

    def clock_changed(self) -> None:
        """The injected `clock` jumped: the sim thread recomputes its deadlines now (it
        otherwise sleeps until the one it computed from the old time)."""
        self._wake()

    @property
    def faults(self) -> WireFaults:
        """A copy of the faults still armed."""
        with self._cond:
            return dataclasses.replace(self._faults)

    def unplug(self) -> None:
        """The USB cable is pulled: the agent's port sees EIO/hangup; the firmware is off."""
        self._require_replug()
        self._submit(self._unplug_locked)

    def replug(self) -> None:
        """Plugged back in: a new pty (symlink re-pointed), the firmware boots: new session."""
        self._require_replug()

        def job() -> None:
            self._unplug_locked()
            self._plug()
            self.model.reboot()
            self._new_link()

        self._submit(job)

    def reboot(self) -> None:
        """The firmware restarts: volatile state and unsent frames lost, new link session."""

        def job() -> None:
            self.model.reboot()
            self._tx.clear()
            self._delayed.clear()
            self._rx.clear()
            self._rx_skip = False
            self._new_link()

        self._submit(job)

    def add_listener(self, listener: Callable[[Message], None]) -> Callable[[], None]:
        """Call `listener(message)` for every message the model emits, after it is queued on the
        link (in the sim thread, lock held: it must not block; `call()` from it is deferred).
        Returns a function that removes it."""
        with self._cond:
            self._listeners.append(listener)

        def remove() -> None:
            with self._cond:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    # --- observation --------------------------------------------------------------------------

    def snapshot(self) -> ModelSnapshot:
        with self._cond:
            return self.model.snapshot()

    def stats(self) -> RunnerStats:
        with self._cond:
            return self._stats_locked()

    def wait_for(self, predicate: Callable[[DispenserModel], bool], timeout: float = 5.0) -> None:
        """Block until `predicate(model)` holds (checked under the lock after every change)."""
        self._wait(lambda: predicate(self.model), timeout, "model condition")

    def wait_for_stats(
        self, predicate: Callable[[RunnerStats], bool], timeout: float = 5.0
    ) -> None:
        self._wait(lambda: predicate(self._stats_locked()), timeout, "stats condition")

    # --- internals: threading -----------------------------------------------------------------

    def _wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: self._thread_error is not None or condition(), timeout)
            if self._thread_error is not None:
                raise RuntimeError("simulator thread failed") from self._thread_error
            if not ok:
                raise TimeoutError(f"{what} not met within {timeout} s")

    def _require_replug(self) -> None:
        if not self._replug_supported:
            raise RuntimeError("unplug/replug needs a pty runner")

    def _submit(self, fn: Callable[[], None]) -> None:
        with self._cond:
            thread = self._thread
            if thread is not None and threading.current_thread() is thread:
                # From a listener, inside the sim thread: run after the current batch of
                # messages (a patient reacts to a dose after it is presented), without waiting.
                self._jobs.append(_Job(fn))
                return
            if thread is None or not thread.is_alive() or self._stopping:
                # Not running: act here; bytes go out now if a port is open.
                fn()
                self._flush(self._clock())
                self._cond.notify_all()
                return
            job = _Job(fn)
            self._jobs.append(job)
        self._wake()
        if not job.done.wait(JOB_TIMEOUT_S):
            raise TimeoutError("simulator thread did not run the action in time")
        if job.error is not None:
            raise job.error

    def _wake(self) -> None:
        # A full pipe means a wake-up is already pending; a closed one, that we stopped.
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    if self._stopping:
                        return
                    port = self._port
                    now = self._clock()
                    if self._check_silence_locked(now):
                        self._cond.notify_all()
                    timeout = self._timeout_locked(now)
                    want_write = bool(self._tx) and port is not None
                readers = [self._wake_r] if port is None else [self._wake_r, port.fd]
                writers = [port.fd] if want_write and port is not None else []
                readable, _writable, _ = select.select(readers, writers, [], timeout)
                with self._cond:
                    if self._wake_r in readable:
                        self._drain_wake()
                    self._run_jobs()
                    now = self._clock()
                    if port is not None and port is self._port and port.fd in readable:
                        self._read(port, now)
                    self._release_late_replies(now)
                    if not self._link_held:
                        self._on_events(self._link.poll(now))
                    self._flush(now)
                    self._check_silence_locked(now)
                    self._cond.notify_all()
        except BaseException as exc:  # a model bug must be visible to the test, not silent
            log.exception("simulator thread failed")
            with self._cond:
                self._thread_error = exc
                self._cond.notify_all()

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _run_jobs(self) -> None:
        while self._jobs:
            job = self._jobs.popleft()
            try:
                job.fn()
            except Exception as exc:  # a test's action: kept for call(), which raises it
                log.exception("simulator action failed")
                job.error = exc
            finally:
                job.done.set()

    def _check_silence_locked(self, now: float) -> bool:
        """Let the model raise its silence alarm (SPEC 4.7); True if this raised it. The firmware
        is off while unplugged: no timer runs."""
        if self._port is None or self.model.silence_alarm:
            return False
        return self.model.check_agent_silence(now)

    def _timeout_locked(self, now: float) -> float | None:
        deadlines = [when for when, _ in self._delayed]
        deadlines += [when for when, _ in self._late_replies]
        link_deadline = None if self._link_held else self._link.next_deadline()
        if link_deadline is not None:
            deadlines.append(link_deadline)
        silence_deadline = self.model.agent_silence_deadline()
        if silence_deadline is not None and self._port is not None:
            deadlines.append(silence_deadline)
        if self._jobs:
            return 0.0
        return max(0.0, min(deadlines) - now) if deadlines else None

    # --- internals: port ----------------------------------------------------------------------

    def _plug(self) -> None:
        port = self._open_port()
        self._port = port
        self._device_name = port.name
        if self._link_path is not None:
            tmp = self._link_path.with_name(f".{self._link_path.name}.{os.getpid()}.tmp")
            tmp.unlink(missing_ok=True)
            os.symlink(port.name, tmp)
            os.replace(tmp, self._link_path)  # atomic: the agent never sees the path missing

    def _unplug_locked(self) -> None:
        if self._port is not None:
            self._port.close()
            self._port = None
        if self._link_path is not None and self._link_path.is_symlink():
            self._link_path.unlink()
        self._tx.clear()
        self._delayed.clear()
        self._rx.clear()
        self._rx_skip = False

    def _close_fds(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _port_failed(self, exc: OSError) -> None:
        log.error("port %s failed: %s", self._device_name, exc)
        self._unplug_locked()

    def _new_link(self) -> None:
        # SPEC 2.7: what was in flight or queued is kept (non-volatile) for the next Hello.
        # Abandoned first, so its failures are in the figures the retired session hands over.
        self._on_events(self._link.abandon_in_flight(self._clock()))
        old = self._link.stats
        r = self._retired
        r.frames_in += old.frames_in
        r.frames_out += old.frames_out
        r.retransmits += old.retransmits
        r.duplicates += old.duplicates
        r.naks_sent += old.naks_sent
        r.failures += old.failures
        r.rejected.update(old.rejected)
        session = _new_session(self._link.session)
        if "reused_session" in self.defects:
            session = self._link.session
        self._link = LinkEndpoint(Direction.TO_AGENT, session, self._link_config)
        self._sessions += 1

    def _stats_locked(self) -> RunnerStats:
        cur, ret, c = self._link.stats, self._retired, self._counters
        rejected: Counter[str] = Counter(ret.rejected)
        rejected.update(cur.rejected)
        return RunnerStats(
            session=self._link.session,
            sessions=self._sessions,
            plugged=self._port is not None,
            frames_in=ret.frames_in + cur.frames_in,
            frames_out=ret.frames_out + cur.frames_out,
            retransmits=ret.retransmits + cur.retransmits,
            duplicates=ret.duplicates + cur.duplicates,
            naks_sent=ret.naks_sent + cur.naks_sent,
            failures=ret.failures + cur.failures,
            rejected=dict(rejected),
            commands=c.commands,
            dropped_out=c.dropped_out,
            corrupted_out=c.corrupted_out,
            duplicated_out=c.duplicated_out,
            delayed_acks=c.delayed_acks,
            garbage_bytes=c.garbage_bytes,
            dropped_in=c.dropped_in,
            lost_unplugged=c.lost_unplugged,
            idle=self._link.idle,
        )

    # --- internals: receiving -----------------------------------------------------------------

    def _read(self, port: _Port, now: float) -> None:
        try:
            data = os.read(port.fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EIO and isinstance(port, _PtyPort):
                return  # no slave side open: nothing to read (cannot happen while held)
            self._port_failed(exc)
            return
        if not data:
            return
        self._rx += data
        while True:
            end = self._rx.find(0)
            if self._rx_skip:
                if end < 0:
                    self._rx.clear()
                    return
                self._rx_skip = False
            elif end < 0:
                if len(self._rx) > MAX_STUFFED:
                    # Let the link count it as oversize, then skip to the next delimiter as the
                    # link's own decoder would.
                    noise = bytes(self._rx)
                    self._trace_event("in", None, None, "rejected:oversize", noise)
                    self._on_events(self._link.receive_bytes(noise, now))
                    self._rx.clear()
                    self._rx_skip = True
                return
            chunk = bytes(self._rx[:end])
            del self._rx[: end + 1]
            if chunk:
                self._on_chunk(chunk, now)

    def _on_chunk(self, chunk: bytes, now: float) -> None:
        frame, message, note = _describe(chunk)
        if frame is not None and frame.kind is FrameKind.DATA and self._faults.drop_incoming_frames:
            self._faults.drop_incoming_frames -= 1
            self._counters.dropped_in += 1
            self._trace_event("in", frame, message, "not heard", chunk)
            return
        self._trace_event("in", frame, message, note, chunk)
        duplicates = self._link.stats.duplicates
        events = self._link.receive_bytes(b"\x00" + chunk + b"\x00", now)
        if self._link.stats.duplicates != duplicates or any(
            isinstance(event, LinkReceived) for event in events
        ):
            self.model.note_agent_frame(now)  # SPEC 4.7: heard, before its command is handled
        self._on_events(events)

    def _on_events(self, events: list[LinkEvent]) -> None:
        for event in events:
            if isinstance(event, LinkReceived):
                self._counters.commands += 1
                self._handle(event.message)
            elif isinstance(event, PeerRestarted):
                log.info("agent session %s -> %s", event.old_session, event.new_session)
            elif isinstance(event, Failed):
                log.warning("agent did not take %s: %s", event.message, event.reason)
                self._keep(event)

    def _handle(self, command: Message) -> None:
        replies = self.model.handle(command)
        if isinstance(command, Hello):
            # SPEC 2.7: the kept events right after Capabilities, before the state announcements
            kept, self._kept = self._kept, []
            if "no_resend" in self.defects:
                kept = []
            replies = replies[:1] + kept + replies[1:]
            if "oversize_frame" in self.defects:
                self._raw_out += _oversize_frame(self._link.session)
        first = replies[0] if replies else None
        if (
            "late_reply" in self.defects
            and isinstance(command, Dispense)
            and isinstance(first, CommandResult)
            and first.result is ResultCode.OK
        ):
            self._late_replies.append((self._clock() + LATE_REPLY_S, first))
            replies = replies[1:]
        for reply in replies:
            self._emit(reply)

    def _release_late_replies(self, now: float) -> None:
        due = [m for when, m in self._late_replies if when <= now]
        self._late_replies = [(w, m) for w, m in self._late_replies if w > now]
        for message in due:
            self._emit(message)

    def _keep(self, failed: Failed) -> None:
        """SPEC 2.7: an event the agent never acknowledged (not a NAK: that is final) waits for
        the next Hello; a reply does not (it answers a request of an agent that moved on)."""
        if isinstance(failed.message, REPLIES) or failed.reason not in ("timeout", "link_down"):
            return
        self._kept.append(failed.message)
        while len(self._kept) > KEPT_EVENTS_MAX:
            drop = next((m for m in self._kept if not isinstance(m, DOSE_OUTCOMES)), self._kept[0])
            self._kept.remove(drop)
            log.warning("kept events full: %s dropped", drop)

    # --- internals: sending -------------------------------------------------------------------

    def _emit(self, message: Message) -> None:
        if self._port is None:
            self._counters.lost_unplugged += 1
        else:
            _, events = self._link.send(message, self._clock())
            self._on_events(events)
        # Listeners hear a message after it is queued on the link, so an action they trigger
        # (deferred by call(), see _submit) can only ever follow it on the wire.
        for listener in list(self._listeners):
            try:
                listener(message)
            except Exception:  # a listener's bug must not take the dispenser down
                log.exception("simulator listener failed")

    def _flush(self, now: float) -> None:
        """Move the link's output through the fault stage onto the port."""
        if self._port is None:
            self._link.take_outgoing()
            return
        for chunk in _split_frames(self._link.take_outgoing()):
            self._fault_stage(chunk, now)
        if self._raw_out:
            self._tx += self._raw_out
            self._trace_event("out", None, None, "oversize", bytes(self._raw_out))
            self._raw_out.clear()
        still_delayed = []
        for when, wire in self._delayed:
            if when <= now:
                self._tx += wire
            else:
                still_delayed.append((when, wire))
        self._delayed = still_delayed
        self._write_tx()

    def _fault_stage(self, chunk: bytes, now: float) -> None:
        faults = self._faults
        frame, message, _ = _describe(chunk)
        if faults.garbage_before_next:
            noise, faults.garbage_before_next = faults.garbage_before_next, b""
            self._counters.garbage_bytes += len(noise)
            self._tx += noise
            self._trace_event("out", None, None, "garbage", noise)
        if faults.drop_next_frames:
            faults.drop_next_frames -= 1
            self._counters.dropped_out += 1
            self._trace_event("out", frame, message, "dropped", chunk)
            return
        note = ""
        if faults.corrupt_next_frames:
            faults.corrupt_next_frames -= 1
            self._counters.corrupted_out += 1
            chunk = _corrupt(chunk)
            note = "corrupted"
        wire = b"\x00" + chunk + b"\x00"
        if frame is not None and frame.kind is FrameKind.DATA and faults.duplicate_next_frames:
            faults.duplicate_next_frames -= 1
            self._counters.duplicated_out += 1
            wire += wire
            note = "duplicated" if not note else f"{note},duplicated"
        if frame is not None and frame.kind is FrameKind.ACK and faults.ack_delay_s > 0:
            self._counters.delayed_acks += 1
            self._delayed.append((now + faults.ack_delay_s, wire))
            self._trace_event("out", frame, message, "delayed", chunk)
            return
        self._tx += wire
        self._trace_event("out", frame, message, note, chunk)

    def _write_tx(self) -> None:
        port = self._port
        while self._tx and port is not None:
            try:
                written = os.write(port.fd, self._tx)
            except BlockingIOError:
                return  # the select loop waits for the port to drain
            except OSError as exc:
                self._port_failed(exc)
                return
            del self._tx[:written]

    def _trace_event(
        self, direction: str, frame: Frame | None, message: Message | None, note: str, raw: bytes
    ) -> None:
        if self._trace is None:
            return
        try:
            self._trace(TraceEvent(direction, frame, message, note, raw))
        except Exception:  # a test's trace callback must not take the dispenser down
            log.exception("trace callback failed")
