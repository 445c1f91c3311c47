"""Errors raised by the protocol package.

Every error is a `ProtocolError`; leaves also inherit `ValueError` so callers that only know the
standard library still catch them. Decoders raise nothing else, whatever bytes they are given.
"""


class ProtocolError(ValueError):
    """Root of every error raised by `protocol`."""


class EncodeError(ProtocolError):
    """A value cannot be represented on the wire (out of range, too long, wrong type)."""


class DecodeError(ProtocolError):
    """Bytes do not form a valid field, message or frame.

    `reason` is a short stable token used for counting rejections (e.g. "bad_crc").
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class FrameError(DecodeError):
    """A frame failed framing, length or CRC checks."""


class MessageDecodeError(DecodeError):
    """A frame was intact but its payload is not a valid v1 message."""
