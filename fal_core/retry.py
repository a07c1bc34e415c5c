"""When to try an HTTP call again, and how long to wait first.

Two kinds of calls:

* Idempotent calls (status, result, cancel, file transfers, upload steps) are retried on 408,
  409, 429, every 5xx, connection failures and dropped or timed-out reads.
* A submit costs money when fal accepts it. It is retried only when it surely did not reach
  fal: the connection was never made, fal's front door answered 429 or 503, or a 5xx came from
  the ingress (no ``x-fal-request-id`` header: the app never saw it). A timeout or a dropped
  connection after the body was sent is ambiguous and is never retried.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from datetime import datetime, timezone

import httpx

IDEMPOTENT_STATUSES = frozenset({408, 409, 429})


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


def is_ingress_error(response: httpx.Response) -> bool:
    """A 5xx that fal's app never produced: it carries no request id of fal's."""
    return response.status_code >= 500 and "x-fal-request-id" not in response.headers


def should_retry_response(response: httpx.Response, *, idempotent: bool) -> bool:
    status = response.status_code
    if idempotent:
        return status in IDEMPOTENT_STATUSES or status >= 500
    return status in (429, 503) or is_ingress_error(response)


def surely_not_sent(exc: httpx.TransportError) -> bool:
    """Whether the request cannot have reached the server: the connection was never made."""
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


def should_retry_exception(exc: httpx.TransportError, *, idempotent: bool) -> bool:
    if idempotent:
        # Connect, read and write failures, drops and timeouts; not a bad URL or a request
        # httpx itself refused to build, which would fail the same way again.
        return isinstance(exc, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError))
    return surely_not_sent(exc)
