"""Dispenser wire protocol v1: typed frames and messages, no I/O.

Read `protocol/SPEC.md` for the normative description. Module map:

- `errors`    the one root error type and its leaves
- `fields`    wire encodings of single fields (integers, booleans, strings, enums)
- `messages`  every message of v1 as a frozen dataclass, and the table keyed by type id
- `framing`   frame header, CRC, COBS, and the stream decoder that resynchronises after garbage
- `link`      sequence numbers, ACK/NAK, retransmit and duplicate suppression (sans-IO)
- `vectors`   the byte vectors in `vectors.json`, shared by the codec tests and the simulator
"""

PROTOCOL_VERSION = 1
