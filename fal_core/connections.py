"""The connections to fal: one TLS context per process, the pool's settings, and connections
opened ahead of the request that will use them.

A new connection to fal costs a TCP and a TLS round trip before the request can go. A pool
that outlives each run (see ``background.py``) pays them once; ``preconnect`` pays them while
something else has to happen anyway (the picture being encoded, the job running on fal).
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
import time
import urllib.request
from typing import Any, Iterable

import httpcore
import httpx

# An idle connection is kept this long: longer than the pause between two runs of a graph, and
# shorter than the usual server idle timeouts (nginx: 75 s), so that the client, not the
# server, ends it. A server that ends one earlier is noticed when the pool picks it: it is
# replaced before the request is written, so nothing is sent twice.
KEEPALIVE_EXPIRY = 60.0
LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=KEEPALIVE_EXPIRY)
# HTTP/1.1: on the emulator, HTTP/2 cannot be measured (it speaks HTTP/1.1 only), and one
# connection per concurrent request is what the benchmark shows to be within target.
HTTP2 = False


def ssl_context() -> ssl.SSLContext:
    """The TLS context every client of this process uses (loading the CA bundle costs ~20 ms).

    SSL_CERT_FILE / SSL_CERT_DIR are honoured as httpx does; a change of them gives a new one.
    """
    return _ssl_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.lru_cache(maxsize=4)
def _ssl_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    return httpx.create_ssl_context(trust_env=True)


class PreconnectBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, able to open connections before they are asked for.

    ``preconnect`` starts the TCP (and TLS) handshakes of connections to an origin; the pool's
    next new connection to that origin takes one of them, waiting for its handshake to finish
    if it has not yet. One unused for KEEPALIVE_EXPIRY seconds, or closed by the server, is
    dropped.
    """

    def __init__(self, context: ssl.SSLContext, http2: bool = HTTP2) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._context = context
        self._alpn = ["http/1.1", "h2"] if http2 else ["http/1.1"]
        self._ready: dict[tuple[str, int], list[tuple[float, asyncio.Task]]] = {}

    def waiting(self, host: str, port: int) -> int:
        """Connections opened or opening to ``host:port`` that no request has taken yet."""
        self._expire()
        return len(self._ready.get((host, port), ()))

    def preconnect(self, scheme: str, host: str, port: int, count: int = 1) -> None:
        """Start ``count`` more connections to the origin (a task each, on the running loop)."""
        for _ in range(count):
            task = asyncio.ensure_future(self._open(scheme, host, port))
            task.add_done_callback(_quiet)
            self._ready.setdefault((host, port), []).append((time.monotonic(), task))

    async def _open(self, scheme: str, host: str, port: int) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout=10.0)
        if scheme == "https":
            self._context.set_alpn_protocols(self._alpn)
            stream = await stream.start_tls(self._context, server_hostname=host, timeout=10.0)
            return _Secured(stream)
        return stream

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        self._expire()
        waiting = self._ready.get((host, port))
        while waiting:
            _, task = waiting.pop(0)
            try:
                stream = await task
            except Exception:
                continue  # the request opens a connection of its own, and reports its failure
            if await _alive(stream):
                return stream
            await stream.aclose()  # the server closed it while it waited
        return await self._inner.connect_tcp(host, port, timeout=timeout, local_address=local_address,
                                             socket_options=socket_options)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        return await self._inner.connect_unix_socket(path, timeout=timeout, socket_options=socket_options)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)

    def _expire(self) -> None:
        limit = time.monotonic() - KEEPALIVE_EXPIRY
        for origin, waiting in list(self._ready.items()):
            for opened, task in [w for w in waiting if w[0] < limit]:
                waiting.remove((opened, task))
                _close_when_done(task)
            if not waiting:
                del self._ready[origin]

    async def aclose(self) -> None:
        for waiting in self._ready.values():
            for _, task in waiting:
                _close_when_done(task)
        self._ready.clear()


class _Secured(httpcore.AsyncNetworkStream):
    """A stream whose TLS handshake is done: httpcore's own start_tls becomes a no-op."""

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        return self

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


async def _alive(stream: httpcore.AsyncNetworkStream) -> bool:
    """Whether a connection no request has used yet is still open.

    Readable means closed, or (TLS 1.3) the session tickets the server sends after the
    handshake: a short read consumes those and then finds nothing more to read.
    """
    if not stream.get_extra_info("is_readable"):
        return True
    try:
        await stream.read(1, timeout=0.002)
    except httpcore.ReadTimeout:
        return True
    except (httpcore.NetworkError, OSError):
        return False
    return False  # the end of the stream, or bytes nobody asked for


def _quiet(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()  # a failed pre-connect is not an error: the request connects itself


def _close_when_done(task: asyncio.Task) -> None:
    def close(done: asyncio.Task) -> None:
        if not done.cancelled() and done.exception() is None:
            asyncio.ensure_future(done.result().aclose())
    if task.done():
        close(task)
    else:
        task.add_done_callback(close)


class Pool:
    """An httpx.AsyncClient on a connection pool that can pre-connect; the client carries no key
    (it goes on each request), so every configuration can share it."""

    def __init__(self, timeout: httpx.Timeout | float, headers: dict[str, str]) -> None:
        context = ssl_context()
        self.backend = PreconnectBackend(context)
        transport = httpx.AsyncHTTPTransport(verify=context, limits=LIMITS, http2=HTTP2)
        # httpx's transport takes no network backend: its pool is swapped for one made with the
        # same settings and ours.
        self._pool = transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=context, max_connections=LIMITS.max_connections,
            max_keepalive_connections=LIMITS.max_keepalive_connections, keepalive_expiry=LIMITS.keepalive_expiry,
            http1=True, http2=HTTP2, network_backend=self.backend)
        self.http = httpx.AsyncClient(timeout=timeout, headers=headers, trust_env=True, verify=context,
                                      limits=LIMITS, http2=HTTP2, transport=transport)
        # getproxies() also lists NO_PROXY (as "no"), which alone routes nothing through a proxy.
        self._proxied = any(scheme in urllib.request.getproxies() for scheme in ("http", "https", "all"))

    def preconnect(self, url: str, count: int = 1) -> None:
        """Make sure ``count`` connections to ``url``'s origin are idle or opening.

        Call it on the pool's loop. Nothing is opened when the environment names a proxy.
        """
        if self._proxied:
            return
        target = httpx.URL(url)
        port = target.port or (443 if target.scheme == "https" else 80)
        origin = httpcore.Origin(target.scheme.encode(), target.host.encode(), port)
        idle = sum(1 for c in self._pool.connections if c.can_handle_request(origin) and c.is_idle())
        missing = count - idle - self.backend.waiting(target.host, port)
        if missing > 0:
            self.backend.preconnect(target.scheme, target.host, port, missing)

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.backend.aclose()
