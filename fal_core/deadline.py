"""One deadline for a whole job: upload, queue, result and downloads share one timeout."""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, TypeVar

from .errors import RequestTimeout

T = TypeVar("T")
# A result fal completed at the deadline (our cancel came too late) is paid: fetching and
# downloading it get this long rather than being dropped.
LATE_GRACE = 30.0


class Deadline:
    """``timeout`` seconds from now (None: no limit)."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.started = time.monotonic()
        self.at = None if timeout is None else self.started + timeout

    def left(self) -> float | None:
        """Seconds left (never below a millisecond, so a wait still times out); None without a limit."""
        return None if self.at is None else max(self.at - time.monotonic(), 0.001)

    def passed(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    def or_grace(self, seconds: float) -> "Deadline":
        """This deadline, or ``seconds`` more when it has passed already: for a result that was
        paid for at the deadline (a cancel that came too late), which is worth downloading."""
        return Deadline(seconds) if self.passed() else self

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    async def bound(self, awaitable: Awaitable[T], what: str, after: str = "") -> T:
        """Await ``awaitable`` within the time left; past it, raise RequestTimeout naming ``what``."""
        if self.at is None:
            return await awaitable
        try:
            return await asyncio.wait_for(awaitable, self.left())
        except asyncio.TimeoutError as exc:
            if isinstance(exc, RequestTimeout):
                raise
            raise RequestTimeout(f"The {what} did not finish within the timeout of {self.timeout:g} s. {after}"
                                 "Raise the timeout if fal or the network is slow.".strip()) from None
