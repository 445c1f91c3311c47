"""Commands from the response centre: validate, execute at most once, answer, audit.

Path of one command (docs/response-centre-guide.md):
1. parse and validate (pydantic, `agent.contract.commands`); a bad payload is answered `rejected`
   with the reason (no answer if even its command id is unreadable: then only the event and audit
   record say it happened);
2. a command id seen before gets its first answer again, byte for byte, and is not executed
   again: exactly one answer per command id for ever, whether the broker redelivered it (after a
   crash between the answer and the PUBACK) or the centre sent it again;
3. with an untrusted clock the expiry cannot be checked: rejected (`clock_untrusted`, final for
   that command id like every answer: send it again under a new id once the clock is trusted);
   past its `expires_at`: `expired` — a stale "pause" must never run days later;
4. executed through the engine: the engine step, the command record and its audit record are
   committed in one transaction; then the answer is published (MQTT 5 response topic and
   correlation data when given, else the unit's response topic; the id is in the payload).
Every command, accepted or not, leaves an audit record; every refusal also an event.

The same path serves a technician on site: `dispenser-agent plan discard` hands a command to the
running daemon over its local control socket (`agent/local_control.py`); it is answered there,
not on MQTT, carries source `on_site` to the engine and the audit record, and only the commands
in `LOCAL_COMMANDS` are accepted that way (anything else is `not_allowed_locally`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from agent.clock import TimeTrust
from agent.contract.commands import (
    CommandError,
    CommandInvalid,
    CommandRequest,
    CommandResponse,
    RequestStatusCommand,
    RequestStatusResult,
    ResendFromCommand,
    ResendFromResult,
    parse_command,
)
from agent.engine.catalogue import make_event
from agent.engine.engine import EngineInputError
from agent.engine.types import FROM_RESPONSE_CENTRE, ON_SITE, Emit
from agent.mqtt.link import InboundMessage

if TYPE_CHECKING:
    from agent.daemon import Daemon

log = logging.getLogger(__name__)

# What a technician on site may do through the local control socket: decide a plan mismatch,
# pause and resume (`dispenser-agent pause`/`resume`, same rules as the centre's), and see the
# unit's status. Schedules and the like stay with the response centre.
LOCAL_COMMANDS = frozenset({"discard_unplanned", "pause", "request_status", "resume"})


class Refused(Exception):  # noqa: N818 - reads as the outcome it is
    def __init__(self, status: str, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class CommandHandler:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    async def run(self) -> None:
        request_topic = self.daemon.topics.command_request
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
            # Acked only now: a crash before this point makes the broker redeliver the command,
            # and the stored command id makes sure it is not executed twice.
            self.daemon.mqtt.ack(message)

    async def handle(self, message: InboundMessage) -> bytes | None:
        # after the connection's birth: no answer of a session arrives before its online message
        await self.daemon.mqtt.wait_ready()
        answer, request = self.answer(message.payload, message.topic, FROM_RESPONSE_CENTRE)
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
        result: RequestStatusResult | ResendFromResult | None = None
        if isinstance(command, RequestStatusCommand):
            result = daemon.status()
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
        if engine_input is None:
            daemon.apply([], daemon.clock.now(), within=record)
            return response
        try:
            daemon.step(engine_input, within=record)
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
