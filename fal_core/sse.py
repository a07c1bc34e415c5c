"""Server-sent events: the ``data`` of each event in a text/event-stream body, with bounded memory.

A line or an event is capped at MAX_EVENT_BYTES: a server that sends one endless line (no
newline ever) would otherwise grow the process without limit, since a line is only complete at
its end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from .errors import ResponseTooLarge

# fal's status events are a few kB, logs included.
MAX_EVENT_BYTES = 1024 * 1024


async def iter_lines(chunks: AsyncIterator[bytes], *, max_bytes: int = MAX_EVENT_BYTES) -> AsyncIterator[str]:
    """The lines of a byte stream (ended by LF, CRLF or CR), each at most ``max_bytes``."""
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(buffer[:end])
            del buffer[:end + 1]
            for part in line.removesuffix(b"\r").split(b"\r"):
                yield part.decode("utf-8", "replace")
        if len(buffer) > max_bytes:
            raise ResponseTooLarge(f"The status stream sent a line of over {max_bytes:,} bytes without an end; "
                                "it was dropped instead of being held in memory.")
    if buffer:
        for part in bytes(buffer).split(b"\r"):
            yield part.decode("utf-8", "replace")


async def iter_data(lines: AsyncIterator[str], *, max_bytes: int = MAX_EVENT_BYTES) -> AsyncIterator[str]:
    """Yield each complete event's data (multi-line data joined with newlines), each at most
    ``max_bytes`` characters.

    An event is complete at its blank line; one cut off by the end of the stream is dropped,
    as the SSE specification says, since it may be truncated.
    """
    data: list[str] = []
    size = 0
    async for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data, size = [], 0
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value.removeprefix(" "))
            size += len(data[-1]) + 1
            if size > max_bytes:
                raise ResponseTooLarge(f"The status stream sent an event of over {max_bytes:,} bytes; "
                                    "it was dropped instead of being held in memory.")
