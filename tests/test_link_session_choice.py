"""SPEC v1.1 §2.1: a new link session never equals the previous one, or the peer takes the first
frame of the new session (seq 0) for a retransmit of the last frame it accepted, ACKs it and
drops it. The agent's session carries its req_id epoch (consecutive processes differ) and
differs from its previous connection's; the simulator's does after every reboot."""

from __future__ import annotations

import asyncio
import random

from drivers.session import DispenserSession
from protocol.framing import FrameDecoder


class SameNumbers(random.Random):
    """An unlucky generator: every draw is the same number."""

    def randint(self, a: int, b: int) -> int:
        return a + 0x0ABC % (b - a + 1)


class RecordingTransport:
    description = "recording"

    def __init__(self) -> None:
        self.written = bytearray()

    async def open(self) -> None:
        return None

    async def read(self) -> bytes:
        await asyncio.Event().wait()  # nothing ever arrives
        return b""

    def write(self, data: bytes) -> None:
        self.written += data

    async def close(self) -> None:
        return None


def hello_sessions(epoch: int, connections: int) -> list[int]:
    """The link session of the Hello of each of `connections` connects of one agent process."""
    transports: list[RecordingTransport] = []

    def factory() -> RecordingTransport:
        transports.append(RecordingTransport())
        return transports[-1]

    session = DispenserSession(
        factory,
        on_message=lambda m: None,
        on_link=lambda r: None,
        rng=SameNumbers(),
        req_epoch=epoch,
    )

    async def main() -> None:
        for _ in range(connections):
            attempt = asyncio.create_task(session._connect_once())
            for _ in range(10):
                await asyncio.sleep(0)
            attempt.cancel()
            await asyncio.gather(attempt, return_exceptions=True)

    asyncio.run(main())
    return [FrameDecoder().feed(bytes(t.written))[0].session for t in transports]


def test_consecutive_connections_of_one_agent_use_different_sessions() -> None:
    first, second, third = hello_sessions(epoch=3, connections=3)
    assert first != second
    assert second != third


def test_consecutive_agent_processes_never_share_a_session() -> None:
    (before,) = hello_sessions(epoch=4, connections=1)
    (after,) = hello_sessions(epoch=5, connections=1)
    assert before != after
    assert before >> 12 == 4
    assert after >> 12 == 5
