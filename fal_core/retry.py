"""When to try an HTTP call again, and how long to wait first.

Two kinds of calls:

* Idempotent calls (status, result, cancel, file transfers, upload steps) are retried on 408,
  409, 429, every 5xx, connection failures and dropped or timed-out reads.
* A submit costs money when fal accepts it. It is re-sent only when fal surely did not take
  it: the connection was never made, or fal answered 429, 502 or 503 (its front door or
  gateway refusing it). A 504 or 524 (a gateway that forwarded the body and gave up waiting),
  any other 5xx, and a timeout or a dropped connection after the body was sent leave open
  whether fal accepted it: never re-sent (the queue client calls such a submit uncertain).

Neither kind is retried on a 504 that fal marks as the caller's own start timeout
(``X-Fal-Request-Timeout-Type: user``), as fal's clients do.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from datetime import datetime, timezone

import httpx

IDEMPOTENT_STATUSES = frozenset({408, 409, 429})
# The answers that prove a submit was refused before fal's queue took it.
SUBMIT_REFUSED = frozenset({429, 502, 503})
USER_TIMEOUT_HEADER = "x-fal-request-timeout-type"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: ``base * 2**(attempt-1)``, capped, times 0.5..1.5."""

    attempts: int = 6
    base: float = 0.25
    cap: float = 8.0
    # A server may ask for a longer wait with Retry-After; we honour it up to this bound.
    retry_after_cap: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt number ``attempt + 1`` (``attempt`` counts from 1)."""
        backoff = min(self.base * 2 ** (attempt - 1), self.cap) * (rng or random).uniform(0.5, 1.5)
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_cap)
        return min(backoff, self.cap)


NO_RETRY = RetryPolicy(attempts=1)
DEFAULT_RETRY = RetryPolicy()


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (either form the RFC allows), or None."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max((when - datetime.now(timezone.utc)).total_seconds(), 0.0)


def is_user_timeout(response: httpx.Response) -> bool:
    """A 504 for the caller's own start timeout (``X-Fal-Request-Timeout``): final."""
    return response.status_code == 504 and response.headers.get(USER_TIMEOUT_HEADER) == "user"


def should_retry_response(response: httpx.Response, *, idempotent: bool) -> bool:
    status = response.status_code
    if is_user_timeout(response):
        return False
    if idempotent:
        return status in IDEMPOTENT_STATUSES or status >= 500
    return status in SUBMIT_REFUSED


def surely_not_sent(exc: httpx.TransportError) -> bool:
    """Whether the request cannot have reached the server: the connection was never made."""
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


def should_retry_exception(exc: httpx.TransportError, *, idempotent: bool) -> bool:
    if idempotent:
        # Connect, read and write failures, drops and timeouts; not a bad URL or a request
        # httpx itself refused to build, which would fail the same way again.
        return isinstance(exc, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError,
                                httpx.ProxyError))
    return surely_not_sent(exc)
