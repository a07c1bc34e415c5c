"""Whether fal accepts a key, checked without running (or paying for) a job."""

from __future__ import annotations

from .retry import RetryPolicy
from .transport import Transport

_RETRY = RetryPolicy(attempts=2)


async def check_key(transport: Transport) -> None:
    """Return when fal accepts the transport's key; raise AuthError (401/403) or another FalError.

    The call is the CDN upload token request: every key that can run jobs may make it (fal's
    clients make it before each upload), it needs the key, it starts no job and costs nothing.
    A status call on the queue would need a request id, and the pricing API is not open to
    every key, so neither could tell a refused key from a key without that access.
    """
    await transport.request("POST", f"{transport.config.rest_url}/storage/auth/token",
                            params={"storage_type": "fal-cdn-v3"}, json={}, what="key check",
                            retry=_RETRY, max_bytes=64 * 1024)
