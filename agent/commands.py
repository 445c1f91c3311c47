"""Commands from the response centre: validate, execute at most once, answer, audit.

Path of one command (docs/response-centre-guide.md):
1. parse and validate (pydantic, `agent.contract.commands`); a bad payload is answered `rejected`
   with the reason (no answer if even its command id is unreadable: then only the event and audit
   record say it happened);
1b. authenticate (`agent.contract.signing`): every command but request_status and resend_from must
   be signed by a trusted response-centre key and name this unit; one issued more than
   MAX_ISSUE_SKEW ahead of the unit's clock, or before the last reset (the command floor kept in
   the store), is refused. Such a refusal is answered, audited and reported
   (`command_unauthenticated`) but not recorded as the command id's answer;
2. a command id seen before gets its first answer again, byte for byte, and is not executed
   again: exactly one answer per command id for ever, whether the broker redelivered it (after a
   crash between the answer and the PUBACK) or the centre sent it again;
3. with an untrusted clock the expiry cannot be checked: rejected (`clock_untrusted`, final for
   that command id like every answer: send it again under a new id once the clock is trusted);
   past its `expires_at`: `expired` — a stale "pause" must never run days later;
4. executed through the engine: the engine step, the command record and its audit record are
   committed in one transaction; then the answer is published on the unit's response topic (an
   MQTT 5 response topic the command names only if it is that topic or lies under the configured
   `mqtt.response_topic_prefix`; correlation data echoed; the id is in the payload).
Every command, accepted or not, leaves an audit record; every refusal also an event — except in
a flood (`agent/command_gate.py`): before step 1 every command over MQTT takes a token of the rate
limit (`command_limits` in the config) or is dropped unanswered; and junk (unreadable,
schema-invalid, unsigned, unknown key, bad signature, another unit's without a signature that
verifies) beyond the first few of a window is not
answered but counted, with the dropped ones, in one `commands_refused_in_bulk` event and one audit
record per window, told when the window ends or the daemon stops.

The same path serves a technician on site: `dispenser-agent plan discard` hands a command to the
running daemon over its local control socket (`agent/local_control.py`); it is answered there,
not on MQTT, carries source `on_site` to the engine and the audit record, and only the commands
in `LOCAL_COMMANDS` are accepted that way (anything else is `not_allowed_locally`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from agent.clock import TimeTrust, utc_text
from agent.command_gate import RATE_LIMITED, RefusalFold, TokenBucket
from agent.contract.commands import (
    AnyCommand,
    CommandError,
    CommandInvalid,
    CommandRequest,
    CommandResponse,
    PauseCommand,
    RequestStatusCommand,
    RequestStatusResult,
    RequestSummaryCommand,
    ResendFromCommand,
    ResendFromResult,
    ResetUnitCommand,
    RotateCentreKeysCommand,
    SummaryResult,
    UpdateScheduleCommand,
    parse_command,
)
from agent.contract.signing import (
    BAD_SIGNATURE,
    ISSUED_IN_FUTURE,
    REPLAYED,
    UNKNOWN_KEY,
    UNSIGNED,
    UNSIGNED_COMMANDS,
    WRONG_UNIT,
    SignatureError,
    key_id,
    load_public_key,
    verify_request,
)
from agent.engine.catalogue import make_event
from agent.engine.engine import EngineInputError
from agent.engine.types import FROM_RESPONSE_CENTRE, ON_SITE, Action, Emit
from agent.mqtt.link import InboundMessage

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from agent.host import CommandHost
    from agent.store.db import Store

log = logging.getLogger(__name__)

# What a technician on site may do through the local control socket: decide a plan mismatch,
# pause and resume (`dispenser-agent pause`/`resume`, same rules as the centre's), and see the
# unit's status. Schedules and the like stay with the response centre.
LOCAL_COMMANDS = frozenset(
    {"discard_unplanned", "pause", "request_status", "request_summary", "resume"}
)
# how far ahead of the unit's clock a signed command may say it was issued (clocks drift)
MAX_ISSUE_SKEW = timedelta(minutes=5)
# Authentication refusals that say only "not from the centre": folded in a flood, and so is
# wrong_unit when the signature does not verify either. A command signed by a trusted key (wrong
# unit, issued in the future, replayed, expired, refused by the engine) is always answered on its
# own, within the rate limit.
FOLDED_AUTH_CODES = frozenset({UNSIGNED, UNKNOWN_KEY, BAD_SIGNATURE})
BULK_KIND = "commands_refused_in_bulk"


class Refused(Exception):  # noqa: N818 - reads as the outcome it is
    def __init__(self, status: str, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _key_changes(store: Store) -> tuple[list[str], set[str]]:
    stored = store.centre_key_changes()
    if stored is None:
        return [], set()
    changes = json.loads(stored)
    return list(changes["added"]), set(changes["retired"])


def trusted_keys(config_keys: Sequence[str], store: Store) -> dict[str, Ed25519PublicKey]:
    """The configured centre keys plus those added by signed rotations, less the retired."""
    added, retired = _key_changes(store)
    keys = [load_public_key(text) for text in [*config_keys, *added]]
    return {key_id(key): key for key in keys if key_id(key) not in retired}


def authenticate(
    request: CommandRequest,
    *,
    unit_id: str,
    trusted: Mapping[str, Ed25519PublicKey],
    now_utc: datetime,
    trust: TimeTrust,
    floor: datetime | None,
) -> None:
    """Refuse (Refused, a code of agent.contract.signing.AUTH_CODES) a command the unit cannot
    trust; see agent/contract/signing.py and the guide's "Signed commands". Usable outside the
    daemon too (e.g. a signed command a technician presents on site, with `trusted_keys`)."""
    if request.unit_id is not None and request.unit_id != unit_id:
        raise Refused("rejected", WRONG_UNIT, f"the command is for unit {request.unit_id}")
    if request.command.name in UNSIGNED_COMMANDS and request.signature is None:
        return  # read-only; answered only on this unit's own response topic
    if request.signature is None:
        raise Refused("rejected", UNSIGNED, "the command is not signed by the response centre")
    if request.unit_id is None:
        raise Refused("rejected", WRONG_UNIT, "a signed command must name its unit_id")
    try:
        verify_request(request.wire, trusted)
    except SignatureError as problem:
        raise Refused("rejected", problem.code, problem.message) from None
    if trust is not TimeTrust.UNTRUSTED and request.issued_at > now_utc + MAX_ISSUE_SKEW:
        raise Refused(
            "rejected",
            ISSUED_IN_FUTURE,
            f"issued_at {request.issued_at.isoformat()} is ahead of the unit's clock "
            f"({now_utc.isoformat()}) by more than {MAX_ISSUE_SKEW}",
        )
    # an expired one is refused as `expired` further on: it could not run anyway
    if floor is not None and request.issued_at < floor and not request.is_expired(now_utc):
        raise Refused(
            "rejected", REPLAYED, f"issued before {utc_text(floor)}: the unit was reset since"
        )


class CommandHandler:
    def __init__(
        self, daemon: CommandHost, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.daemon = daemon
        limits = daemon.config.command_limits
        self._monotonic = monotonic
        self._bucket = TokenBucket.full(limits.burst, limits.per_s, monotonic())
        self._fold = RefusalFold(limits.individual_refusals, float(limits.window_s))
        self._fold_timer: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        request_topic = self.daemon.topics.command_request
        try:
            async for message in self.daemon.mqtt.messages():
                if message.topic != request_topic:
                    # Some brokers (amqtt) push retained messages a client never subscribed to.
                    log.debug("ignoring a message on %s", message.topic)
                    self.daemon.mqtt.ack(message)
                    continue
                try:
                    await self.handle(message)
                except Exception:  # one bad command must not stop command handling
                    log.exception("command handling failed for a message on %s", message.topic)
                # Acked only once what it did is committed: a crash (or a store fault, raised
                # here) before this point makes the broker redeliver the command, and the stored
                # command id makes sure it is not executed twice.
                await self.daemon.committed()
                self.daemon.mqtt.ack(message)
        finally:
            # A stop tells what the open window counted (a kill -9 loses it: see the guide).
            self.flush_refusals()

    async def handle(self, message: InboundMessage) -> bytes | None:
        # Before anything else (parsing, signature, store): a command over the rate limit is
        # only counted. Not executed, no answer, no event of its own.
        if not self._bucket.take(self._monotonic()):
            self._folded(RATE_LIMITED, None, may_answer=False)
            return None
        # after the connection's birth: no answer of a session arrives before its online message
        await self.daemon.mqtt.wait_ready()
        answer, request = self.answer(message.payload, message.topic, FROM_RESPONSE_CENTRE)
        await self.daemon.committed()  # no answer goes out before what it says is stored
        if answer is not None:
            await self.daemon.publish_response(
                answer, message.response_topic, message.correlation_data
            )
        if request is not None and isinstance(request.command, RequestStatusCommand):
            await self.daemon.publish_retained_state()
        return answer

    def answer(
        self, payload: bytes, origin: str, source: str
    ) -> tuple[bytes | None, CommandRequest | None]:
        """Parse, check, execute and record one command; its answer's payload (None when its id
        could not be read) and the request when it was executed or refused now (not for a
        command id answered before: that gets the recorded answer, unchanged)."""
        daemon = self.daemon
        now = daemon.clock.now()
        try:
            request = parse_command(payload)
        except CommandInvalid as problem:
            if source != ON_SITE and self._folded(problem.code, problem.command_id):
                return None, None
            if problem.command_id is not None:
                seen = daemon.store.command_seen(problem.command_id)
                if seen is not None:
                    return seen.response_json.encode(), None
            response = CommandResponse.for_invalid(problem, now.utc)
            self._record_refusal(
                problem.command_id,
                problem.name,
                "rejected",
                problem.code,
                problem.message,
                response,
                origin,
                len(payload),
                source,
            )
            return (None if response is None else response.to_payload()), None

        command_id = str(request.command_id)
        name = request.command.name
        if source != ON_SITE:  # on site: the local socket's permissions stand for the signature
            try:
                self._authenticate(request, now.utc, now.trust)
            except Refused as refusal:
                if self._junk(request, refusal) and self._folded(refusal.code, command_id):
                    return None, None
                return self._refuse_unauthenticated(request, refusal, origin, len(payload), source)
        seen = daemon.store.command_seen(command_id)
        if seen is not None:
            return seen.response_json.encode(), None  # the first answer, byte for byte

        try:
            if source == ON_SITE and name not in LOCAL_COMMANDS:
                raise Refused(
                    "rejected",
                    "not_allowed_locally",
                    f"{name} comes from the response centre; on site only: "
                    + ", ".join(sorted(LOCAL_COMMANDS)),
                )
            response = self._execute(request, now.utc, now.trust, source)
        except Refused as refusal:
            response = CommandResponse(
                command_id=command_id,
                status=refusal.status,  # type: ignore[arg-type]
                error=CommandError(code=refusal.code, message=refusal.message),
                responded_at=now.utc,
            )
            self._record_refusal(
                command_id,
                name,
                refusal.status,
                refusal.code,
                refusal.message,
                response,
                origin,
                len(payload),
                source,
            )
        return response.to_payload(), request

    def trusted_keys(self) -> dict[str, Ed25519PublicKey]:
        return trusted_keys(self.daemon.config.centre_keys, self.daemon.store)

    # --- flood control ----------------------------------------------------------------------

    def _junk(self, request: CommandRequest, refusal: Refused) -> bool:
        """An authentication refusal of a command no trusted key signed (foldable in a flood)."""
        if refusal.code in FOLDED_AUTH_CODES:
            return True
        if refusal.code != WRONG_UNIT:
            return False
        try:  # checked before the signature: is it the centre's command for another unit?
            verify_request(request.wire, self.trusted_keys())
        except SignatureError:
            return True
        return False

    def _folded(self, reason: str, command_id: str | None, *, may_answer: bool = True) -> bool:
        """Note a junk refusal (or one over the rate limit): True when it is folded into the
        window's count (nothing else is done with it), False when it is to be answered and
        reported on its own as before. Writes nothing to the store."""
        now = self._monotonic()
        if self._fold.expired(now):
            self.flush_refusals()
        at_utc = utc_text(self.daemon.clock.now().utc)
        if self._fold.admit(reason, now, at_utc, command_id, may_answer=may_answer):
            return False
        if self._fold_timer is None:
            closes = self._fold.closes_at()
            assert closes is not None  # admit() opened the window
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a test calling answer() directly): told at stop
                return True
            self._fold_timer = loop.call_later(max(0.0, closes - now), self.flush_refusals)
        return True

    def flush_refusals(self) -> None:
        """Close the fold window: one `commands_refused_in_bulk` event and one audit record for
        what it counted (nothing when it counted nothing)."""
        if self._fold_timer is not None:
            self._fold_timer.cancel()
            self._fold_timer = None
        report = self._fold.report()
        if report is None:
            return
        daemon = self.daemon
        fields = report.fields()

        def record() -> None:
            daemon.store.audit_append(BULK_KIND, fields, *daemon.stamp())

        try:
            daemon.apply([Emit(make_event(BULK_KIND, fields))], daemon.clock.now(), within=record)
        except Exception:  # a store fault has started the fail-safe; the counts go to the log
            log.exception("refused commands not reported: %s", fields["counts"])
            return
        log.warning(
            "%d commands refused in bulk in %d s (not answered): %s",
            fields["total"],
            report.window_s,
            fields["counts"],
        )

    def _key_changes(self) -> tuple[list[str], set[str]]:
        return _key_changes(self.daemon.store)

    def _authenticate(self, request: CommandRequest, now_utc: datetime, trust: TimeTrust) -> None:
        daemon = self.daemon
        authenticate(
            request,
            unit_id=daemon.config.unit_id,
            trusted=self.trusted_keys(),
            now_utc=now_utc,
            trust=trust,
            floor=daemon.store.command_floor(),
        )

    def _refuse_unauthenticated(
        self,
        request: CommandRequest,
        refusal: Refused,
        origin: str,
        payload_bytes: int,
        source: str,
    ) -> tuple[bytes | None, CommandRequest | None]:
        """Audit, report and answer a command that failed authentication. Its answer is not
        recorded for the command id: an untrusted sender does not own that id (the centre's
        real command with the same id is still carried out); a command id answered before gets
        that answer again."""
        daemon = self.daemon
        command_id = str(request.command_id)
        signature = request.signature
        fields: dict[str, object] = {
            "command_id": command_id,
            "name": request.command.name,
            "code": refusal.code,
            "key_id": None if signature is None else signature.key_id[:16],
            "message": refusal.message,
        }
        event = make_event("command_unauthenticated", fields)

        def record() -> None:
            daemon.store.audit_append(
                "command_rejected",
                {
                    "command_id": command_id,
                    "topic": origin,
                    "source": source,
                    "status": refusal.status,
                    "code": refusal.code,
                    "key_id": fields["key_id"],
                    "payload_bytes": payload_bytes,
                },
                *daemon.stamp(),
            )

        daemon.apply([Emit(event)], daemon.clock.now(), within=record)
        log.warning("command %s refused: %s (%s)", command_id, refusal.code, refusal.message)
        seen = daemon.store.command_seen(command_id)
        if seen is not None:
            return seen.response_json.encode(), None
        response = CommandResponse(
            command_id=command_id,
            status="rejected",
            error=CommandError(code=refusal.code, message=refusal.message),
            responded_at=daemon.clock.now().utc,
        )
        return response.to_payload(), request

    def _rotate_keys(self, command: RotateCentreKeysCommand) -> tuple[Callable[[], None], Emit]:
        """Check a key rotation; return what stores it (in the command's transaction) and its
        event. Refused when it would leave no trusted key."""
        added, retired = self._key_changes()
        new_added = [text for text in command.add if text not in added]
        new_retired = retired | set(command.retire)
        keys = [load_public_key(t) for t in [*self.daemon.config.centre_keys, *added, *new_added]]
        trusted_after = sorted({key_id(k) for k in keys} - new_retired)
        if not trusted_after:
            raise Refused(
                "rejected",
                "no_trusted_key_left",
                "after this rotation the unit would trust no key: add one before retiring the last",
            )
        changes = json.dumps({"added": [*added, *new_added], "retired": sorted(new_retired)})
        event = Emit(
            make_event(
                "centre_keys_changed",
                {
                    "added": [key_id(load_public_key(t)) for t in command.add],
                    "retired": list(command.retire),
                    "trusted": trusted_after,
                },
            )
        )
        store = self.daemon.store
        return (lambda: store.set_centre_key_changes(changes)), event

    def _execute(
        self, request: CommandRequest, now_utc: datetime, trust: TimeTrust, source: str
    ) -> CommandResponse:
        daemon = self.daemon
        if trust is TimeTrust.UNTRUSTED:
            raise Refused(
                "rejected",
                "clock_untrusted",
                "the unit's clock is not trusted yet, so expiry cannot be checked",
            )
        if request.is_expired(now_utc):
            raise Refused(
                "expired", "expired", f"command expired at {request.expires_at.isoformat()}"
            )
        command = request.command
        result: RequestStatusResult | ResendFromResult | SummaryResult | None = None
        if isinstance(command, RequestStatusCommand):
            result = daemon.status()
        elif isinstance(command, RequestSummaryCommand):
            summary = daemon.summary_on_request(command.period, command.label, now_utc)
            if summary is None:
                raise Refused(
                    "rejected",
                    "invalid_command",
                    f"the {command.period} {command.label} has not begun on the unit's clock",
                )
            result = SummaryResult.model_validate(summary, strict=False)  # times as text
        elif isinstance(command, ResendFromCommand):
            until = daemon.publisher.resend_from(command.seq)
            result = ResendFromResult(from_seq=command.seq, until_seq=until)
        response = CommandResponse(
            command_id=str(request.command_id),
            status="ok",
            result=result,
            responded_at=now_utc,
        )
        record = self._recorder(request, response, source)
        engine_input = request.to_engine_input(source)
        if isinstance(command, ResetUnitCommand):
            raise Refused(
                "rejected",
                "on_site_only",
                "reset_unit is presented on site (dispenser-agent reset --termination "
                "--signed-reset FILE), never carried out from a distance",
            )
        if isinstance(command, RotateCentreKeysCommand):
            store_keys, changed = self._rotate_keys(command)

            def record_rotation() -> None:
                store_keys()
                record()

            daemon.apply([changed], daemon.clock.now(), within=record_rotation)
            return response
        if engine_input is None:
            daemon.apply([], daemon.clock.now(), within=record)
            return response
        try:
            daemon.step(engine_input, within=record, also=_warnings(command))
        except EngineInputError as exc:
            raise Refused("rejected", exc.code, str(exc)) from None
        return response

    def _recorder(
        self, request: CommandRequest, response: CommandResponse, source: str
    ) -> Callable[[], None]:
        store = self.daemon.store
        command_id = str(request.command_id)

        def record() -> None:
            store.record_command(command_id, request.command.name, response.model_dump_json())
            store.audit_append(
                "command",
                {
                    "command_id": command_id,
                    "name": request.command.name,
                    "issued_by": request.issued_by,
                    "signed_by": None if request.signature is None else request.signature.key_id,
                    "source": source,
                    "command": json.loads(request.command.model_dump_json()),
                    "status": response.status,
                },
                *self.daemon.stamp(),
            )

        return record

    def _record_refusal(
        self,
        command_id: str | None,
        name: str | None,
        status: str,
        code: str,
        message_text: str,
        response: CommandResponse | None,
        origin: str,
        payload_bytes: int,
        source: str,
    ) -> None:
        daemon = self.daemon
        store = daemon.store
        event = make_event(
            "command_rejected",
            {
                "command_id": command_id,
                "name": name,
                "status": status,
                "code": code,
                "message": message_text,
            },
        )

        def record() -> None:
            # Every answer is final for its command id, a clock_untrusted refusal too: a centre
            # must never get two different answers to one command.
            if (
                response is not None
                and command_id is not None
                and store.command_seen(command_id) is None
            ):
                store.record_command(command_id, name or "unreadable", response.model_dump_json())
            store.audit_append(
                "command_rejected",
                {
                    "command_id": command_id,
                    "topic": origin,
                    "source": source,
                    "status": status,
                    "code": code,
                    "payload_bytes": payload_bytes,
                },
                *daemon.stamp(),
            )

        daemon.apply([Emit(event)], daemon.clock.now(), within=record)


def _warnings(command: AnyCommand) -> list[Action]:
    """Events for accepted commands that stop every dose: a pause without an end, or a schedule
    without a single dose time (VKP 3.8). Legitimate at times, so accepted, but never quietly."""
    if isinstance(command, PauseCommand) and command.end is None:
        fields: dict[str, object] = {
            "pause_id": command.pause_id,
            "start_utc": utc_text(command.start),
        }
        return [Emit(make_event("pause_open_ended", fields))]
    if isinstance(command, UpdateScheduleCommand) and not any(
        rule.times or any(rule.weekday_times.values()) for rule in command.rules
    ):
        return [Emit(make_event("schedule_empty", {"version": command.version}))]
    return []
