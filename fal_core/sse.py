"""Server-sent events: the ``data`` of each event in a text/event-stream body."""

from __future__ import annotations

from typing import AsyncIterator


async def iter_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """Yield each complete event's data (multi-line data joined with newlines).

    An event is complete at its blank line; one cut off by the end of the stream is dropped,
    as the SSE specification says, since it may be truncated.
    """
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
