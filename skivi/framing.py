"""Frames on a pipe: the one encoding every pipe between Skivi's processes uses (the
engine's hand-over to its children, the cron process's events, the engine's events
forwarded to the application that started it).

A frame is a 4-byte big-endian length, one kind byte, then the body (orjson, by every
user); the length counts the kind byte and the body. What the kinds mean is each pipe's
own contract (``skivi.engine.wire`` for the engine's)."""

from __future__ import annotations

import struct
from collections.abc import Iterator

__all__ = ["FrameReader", "encode_frame"]

_HEADER = struct.Struct(">I")


def encode_frame(kind: bytes, body: bytes = b"") -> bytes:
    return _HEADER.pack(len(body) + 1) + kind + body


class FrameReader:
    """Reassembles frames from pipe reads of any size."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | memoryview) -> Iterator[tuple[bytes, bytes]]:
        """Yield (kind, body) for every complete frame received so far."""
        buf = self._buf
        buf += data
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            (size,) = _HEADER.unpack_from(buf, pos)
            if end - pos - 4 < size:
                break
            start = pos + 4
            yield bytes(buf[start:start + 1]), bytes(buf[start + 1:start + size])
            pos = start + size
        if pos:
            del buf[:pos]
