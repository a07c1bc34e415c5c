"""A fal queue and storage emulator: a real HTTP server on 127.0.0.1 for the tests.

It speaks what fal's clients speak (see ../shared/fal-protocol.md): submit, status (with logs),
the status stream (server-sent events), result, cancel, the CDN token, CDN uploads (single and
multipart), the initiate + PUT fallback, the Platform API's prices and its request history
(``/api/v1/models/requests/by-endpoint``: a request appears there once it has ended, with its
input and output under ``expand=payloads``, paged by ``limit`` and ``next_cursor``). It checks
``Authorization: Key ...``, validates input like fal (422 with a ``detail`` list), and answers
with images derived from the input so a test can prove the round trip by pixels: image k of a
request is ``255 - input + k`` (mod 256), resized to the requested size with nearest-neighbour
sampling, as PNG (see ``expected_output``).

Faults are queued per kind of call with ``fault()`` and consumed in order. Every call is
recorded (``calls()``, ``count()``) so tests assert what fal would have received and charged.

Hostile answers, as an attacker controlling the other end would send them: ``echo_key = True``
echoes the caller's ``Authorization`` into every answer (literally, JSON-escaped and URL-encoded,
in bodies, log lines, errors and a header); a fault's ``patch`` merges fields into one JSON answer
(foreign URLs, odd request ids, extra images), ``pad`` grows it by that many bytes, and
``endless`` sends a body (or, on the status stream, one line) that never ends.

Semantics chosen where fal's are not documented:
- the result of a request that is not finished: 400 ``{"detail": "Request is still in progress"}``;
- cancel of a running or queued request: 202, and the request ends COMPLETED with error
  "Request cancelled" (error_type "RequestCancelled"); its result is then 400;
- cancel of a finished request: 400 ``{"status": "ALREADY_COMPLETED"}``;
- in the history, a failed request has status_code 500 (422 for validation errors), a cancelled
  one 499; ``expire(request_id)`` makes the queue forget a request (status and result 404, as
  after fal's retention) while the history keeps it.

Faults beyond status codes, drops and delays: ``accept=True`` lets the call do its work (a
submit is queued, and paid) before the fault's status or delay answers; ``hide_request_id=True`` answers
a submit 200 without ``request_id`` in the body (the header stays with ``request_id_header``);
``headers`` adds headers to a fault's answer; on cancel, ``complete=True`` lets the request
complete at that moment, so the cancel is answered ALREADY_COMPLETED.

Network costs, off by default: ``rtt`` seconds puts a relay in front of each listener that
delivers every byte RTT/2 after it was sent, both ways (requests, answers, each stream event),
and holds a new connection's first bytes one more RTT (the TCP handshake); with ``tls`` the
listeners speak TLS 1.3 with a certificate of a test CA (``ca_file``; ``env()`` sets
SSL_CERT_FILE), so a TLS handshake costs its real round trip through the relay. Result files
and uploads live on a listener of their own (``cdn_url``), as fal serves them from its CDN
host: a client needs a connection of its own there. ``connections()`` counts the connections
each listener accepted; ``drop_connections()`` closes them, as a server's idle timeout does.

Standalone, for a ComfyUI in another process: ``python tests/fal_emulator.py --port 0 --key K``
(``--rtt 0.05 --tls``) prints one JSON line with the URLs, then serves until killed;
``/_emulator/...`` routes set faults and configuration and read the calls.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import functools
import hashlib
import io
import json
import re
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from urllib.parse import quote

import numpy as np
from aiohttp import web
from PIL import Image

PRESETS = {
    "square_hd": (1024, 1024), "square": (512, 512), "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024), "landscape_4_3": (1024, 768), "landscape_16_9": (1024, 576),
}
NAMESPACES = ("workflows", "comfy")
LOG_LINES = 4
NGINX_502 = ("<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1>"
             "</center><hr><center>nginx</center></body></html>")


@functools.lru_cache(maxsize=None)
def emulator_ca() -> tuple[str, str, str]:
    """(CA certificate, server certificate, server key) files for 127.0.0.1, made once per process."""
    folder = Path(tempfile.mkdtemp(prefix="fal-emulator-ca-"))
    atexit.register(shutil.rmtree, folder, True)
    names = ("ca.pem", "ca.key", "server.pem", "server.key", "server.csr")
    ca, ca_key, cert, key, csr = (str(folder / n) for n in names)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = functools.partial(subprocess.run, check=True, capture_output=True)
    run(["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
         "-subj", "/CN=fal emulator test CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    run(["openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"])
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                                    "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                                    "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
    run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "2", "-extfile", str(folder / "ext.cnf")])
    return ca, cert, key


def expected_output(image: np.ndarray, k: int, size: tuple[int, int] | None) -> np.ndarray:
    """What the emulator returns as image ``k`` for ``image`` (RGB uint8) at ``size`` (w, h)."""
    rgb = image[:, :, :3]
    if size is not None and (rgb.shape[1], rgb.shape[0]) != tuple(size):
        rgb = np.asarray(Image.fromarray(rgb).resize(tuple(size), Image.NEAREST))
    return ((255 - rgb.astype(np.int16) + k) % 256).astype(np.uint8)


# fal's compute happens on fal's machines, not on the client's: the same picture decoded and the
# same result encoded once keep the emulator's own CPU out of what a benchmark measures.
@functools.lru_cache(maxsize=16)
def _decoded(data: bytes) -> np.ndarray | None:
    try:
        array = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except Exception:
        return None
    array.setflags(write=False)
    return array


_OUTPUTS: dict[tuple, tuple[bytes, tuple[int, int]]] = {}
_OUTPUTS_LOCK = threading.Lock()


def _output_png(source: np.ndarray, k: int, size: tuple[int, int] | None) -> tuple[bytes, tuple[int, int]]:
    """Image ``k``'s PNG for ``source`` and its (height, width)."""
    key = (hashlib.sha1(np.ascontiguousarray(source)).digest(), source.shape, k, size)
    with _OUTPUTS_LOCK:
        cached = _OUTPUTS.get(key)
    if cached is None:
        out = expected_output(source, k, size)
        buf = io.BytesIO()
        Image.fromarray(out).save(buf, "PNG", compress_level=1)
        cached = (buf.getvalue(), out.shape[:2])
        with _OUTPUTS_LOCK:
            if len(_OUTPUTS) >= 64:
                _OUTPUTS.pop(next(iter(_OUTPUTS)))
            _OUTPUTS[key] = cached
    return cached


@dataclass
class Call:
    kind: str
    method: str
    path: str
    query: dict
    headers: dict
    body: bytes
    json: Any
    status: int | None
    time: float


@dataclass
class Fault:
    status: int | None = None
    retry_after: float | None = None
    request_id_header: bool = False
    body: Any = None
    drop: str | None = None
    delay: float | None = None
    refuse: bool = False
    drop_mid: bool = False
    patch: dict | None = None
    pad: int | None = None
    endless: bool = False
    accept: bool = False
    hide_request_id: bool = False
    headers: dict | None = None
    complete: bool = False


@dataclass
class Job:
    id: str
    app: str
    input: dict
    created: float
    queue_seconds: float
    job_seconds: float
    queue_positions: int
    fail: str | None = None
    error_type: str | None = None
    cancelled_at: float | None = None
    output: dict | None = None
    ready: Any = None  # the task that sets ``output``
    logs: list = field(default_factory=list)
    sent_at: float = field(default_factory=time.time)
    expired: bool = False

    def ended_at(self) -> float:
        """The wall-clock time it ends (or ended)."""
        run = (self.cancelled_at - self.created) if self.cancelled_at is not None else (
            self.queue_seconds + self.job_seconds)
        return self.sent_at + run

    def history_code(self) -> int:
        if self.cancelled_at is not None and self.cancelled_at - self.created < self.queue_seconds + self.job_seconds:
            return 499
        if self.fail:
            return 422 if "validation" in (self.error_type or "").lower() else 500
        return 200

    def timeline(self, now: float) -> tuple[str, int | None, int]:
        """(state, queue position, number of log lines) at time ``now``."""
        t = now - self.created
        if self.cancelled_at is not None and now >= self.cancelled_at:
            return "CANCELLED", None, min(LOG_LINES, self._logs_at(self.cancelled_at - self.created))
        if t < self.queue_seconds:
            step = self.queue_seconds / max(self.queue_positions, 1)
            return "IN_QUEUE", max(self.queue_positions - 1 - int(t / step), 0), 0
        if t < self.queue_seconds + self.job_seconds:
            return "IN_PROGRESS", None, self._logs_at(t)
        return "COMPLETED", None, LOG_LINES

    def _logs_at(self, t: float) -> int:
        run = t - self.queue_seconds
        if run < 0:
            return 0
        return min(LOG_LINES, 1 + int(run / max(self.job_seconds, 1e-9) * LOG_LINES))

    def next_change(self, now: float) -> float:
        """When the status will next look different (or inf)."""
        t = now - self.created
        points = []
        if self.queue_positions and self.queue_seconds:
            step = self.queue_seconds / self.queue_positions
            points += [i * step for i in range(1, self.queue_positions + 1)]
        points += [self.queue_seconds + i * self.job_seconds / LOG_LINES for i in range(LOG_LINES)]
        points.append(self.queue_seconds + self.job_seconds)
        later = [p for p in points if p > t]
        return self.created + min(later) if later else float("inf")


class FalEmulator:
    def __init__(self, key: str = "test-key-id:test-key-secret", job_seconds: float = 0.2,
                 queue_seconds: float = 0.0, queue_positions: int = 0, host: str = "127.0.0.1",
                 port: int = 0, rtt: float = 0.0, tls: bool = False) -> None:
        self.key = key
        self.rtt = rtt
        self.tls = tls
        self.cdn_port = 0
        self._connections = {"api": 0, "cdn": 0}
        self._servers: list[asyncio.AbstractServer] = []
        self._relays: dict[asyncio.Task, tuple[asyncio.StreamWriter, ...]] = {}
        self.job_seconds = job_seconds
        self.queue_seconds = queue_seconds
        self.queue_positions = queue_positions
        self.host, self.port = host, port
        self.jobs: dict[str, Job] = {}
        self.files: dict[str, tuple[bytes, str]] = {}
        self._calls: list[Call] = []
        self._faults: dict[str, list[Fault]] = {}
        self._next_jobs: list[dict] = []
        self._tokens: set[str] = set()
        self._multipart: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._changed: asyncio.Condition | None = None
        # The Platform API's prices: (unit_price, unit, currency) by endpoint id. Deliberately not
        # the published $0.035, so a test can tell fal's answer from the fallback.
        self.prices: dict[str, tuple[float, str, str]] = {
            "fal-ai/stable-diffusion-v3-medium/image-to-image": (0.04, "image", "USD"),
            "fal-ai/stable-diffusion-v3-medium": (0.04, "image", "USD"),
        }
        # False: this key may not read prices (fal answers 403), as some keys may not.
        self.pricing_access = True
        self.echo_key = False

    # --- control, from the test's thread ---------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"{self._scheme}://{self.host}:{self.port}"

    @property
    def _scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def ca_file(self) -> str | None:
        """The test CA that signed the TLS certificate (None without ``tls``)."""
        return emulator_ca()[0] if self.tls else None

    @property
    def queue_url(self) -> str:
        return self.base_url + "/queue"

    @property
    def rest_url(self) -> str:
        return self.base_url + "/rest"

    @property
    def cdn_url(self) -> str:
        return f"{self._scheme}://{self.host}:{self.cdn_port}/cdn"

    @property
    def api_url(self) -> str:
        """fal's Platform API (https://api.fal.ai/v1)."""
        return self.base_url + "/api/v1"

    def env(self) -> dict[str, str]:
        env = {"FAL_KEY": self.key, "FAL_QUEUE_URL": self.queue_url, "FAL_REST_URL": self.rest_url,
               "FAL_CDN_URL": self.cdn_url, "FAL_API_URL": self.api_url}
        if self.tls:
            env["SSL_CERT_FILE"] = self.ca_file
        return env

    def connections(self) -> dict[str, int]:
        """Connections accepted so far: ``api`` (queue and REST) and ``cdn``."""
        with self._lock:
            return dict(self._connections)

    def drop_connections(self) -> int:
        """Close every open connection, idle or not, as a server's idle timeout does; how many."""
        return asyncio.run_coroutine_threadsafe(self._drop(), self._loop).result(10)

    async def _drop(self) -> int:
        handlers = [h for h in self._runner.server.connections if h.transport is not None]
        for handler in handlers:
            handler.transport.close()
        return len(handlers)

    def accepted(self) -> int:
        """Submits fal accepted: what it would charge for at most."""
        with self._lock:
            return len(self.jobs)

    def expire(self, request_id: str | None = None) -> None:
        """Forget a request (every one by default) in the queue, as fal does past its retention."""
        with self._lock:
            for job in self.jobs.values():
                if request_id in (None, job.id):
                    job.expired = True

    def fault(self, kind: str, *, times: int = 1, **options: Any) -> None:
        with self._lock:
            self._faults.setdefault(kind, []).extend(Fault(**options) for _ in range(times))

    def next_job(self, **options: Any) -> None:
        """Settings for the next submitted job: job_seconds, queue_seconds, fail, error_type."""
        with self._lock:
            self._next_jobs.append(options)

    def calls(self, kind: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if kind is None or c.kind == kind]

    def count(self, kind: str) -> int:
        return len(self.calls(kind))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset(self) -> None:
        with self._lock:
            self._calls.clear()
            self._faults.clear()
            self._next_jobs.clear()
            self.jobs.clear()

    def start(self) -> "FalEmulator":
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="fal-emulator", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fal emulator did not start")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> "FalEmulator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start_site())
        ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _start_site(self) -> None:
        self._changed = asyncio.Condition()
        app = web.Application(client_max_size=512 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        context = None
        if self.tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*emulator_ca()[1:])
        self.port = await self._listen("api", self.port, context)
        self.cdn_port = await self._listen("cdn", 0, context)

    async def _listen(self, name: str, port: int, context: ssl.SSLContext | None) -> int:
        """Serve the app on a listener of its own; with ``rtt``, behind a relay that delays it."""
        def protocol():
            handler = self._runner.server()
            with self._lock:
                self._connections[name] += 1
            return handler

        loop = asyncio.get_running_loop()
        server = await loop.create_server(protocol, self.host, 0 if self.rtt else port, ssl=context)
        self._servers.append(server)
        inner = server.sockets[0].getsockname()[1]
        if not self.rtt:
            return inner
        relay = await asyncio.start_server(functools.partial(self._relay, inner), self.host, port)
        self._servers.append(relay)
        return relay.sockets[0].getsockname()[1]

    async def _relay(self, inner: int, client_reader: asyncio.StreamReader,
                     client_writer: asyncio.StreamWriter) -> None:
        """One client connection through the network model: the handshake's round trip, then
        every byte RTT/2 late in each direction (in order; an end or a reset too)."""
        loop = asyncio.get_running_loop()
        opened = loop.time()
        try:
            server_reader, server_writer = await asyncio.open_connection(self.host, inner)
        except OSError:
            client_writer.transport.abort()
            return
        task = asyncio.current_task()
        self._relays[task] = (client_writer, server_writer)
        try:
            await asyncio.gather(self._pipe(client_reader, server_writer, opened + self.rtt),
                                 self._pipe(server_reader, client_writer, opened))
        finally:
            self._relays.pop(task, None)
            for writer in (client_writer, server_writer):
                writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hold_until: float) -> None:
        loop = asyncio.get_running_loop()
        pending: asyncio.Queue = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await pending.get()
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                if data == b"":
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                if data is None:
                    writer.transport.abort()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        end: bytes | None = b""
        try:
            while data := await reader.read(1 << 16):
                pending.put_nowait((max(loop.time(), hold_until) + self.rtt / 2, data))
        except (ConnectionError, OSError):
            end = None
        pending.put_nowait((max(loop.time(), hold_until) + self.rtt / 2, end))
        try:
            await sender
        except (ConnectionError, OSError):
            pass

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        # Reset rather than cancel: each relay then ends on its own, as over a broken network.
        for writers in list(self._relays.values()):
            for writer in writers:
                writer.transport.abort()
        if self._relays:
            await asyncio.wait(list(self._relays), timeout=2 * self.rtt + 1)
        await self._runner.cleanup()

    # --- routing -------------------------------------------------------------------------

    _ROUTES = [
        ("POST", r"/rest/storage/auth/token", "token"),
        ("POST", r"/rest/storage/upload/initiate", "initiate"),
        ("PUT", r"/gcs/put/(?P<name>.+)", "put_file"),
        ("POST", r"/cdn/files/upload/multipart", "multipart_create"),
        ("POST", r"/cdn/files/upload", "upload"),
        ("PUT", r"/cdn/files/(?P<name>.+)/multipart/(?P<upload>[^/]+)/(?P<part>\d+)", "multipart_part"),
        ("POST", r"/cdn/files/(?P<name>.+)/multipart/(?P<upload>[^/]+)/complete", "multipart_complete"),
        ("GET", r"/cdn/files/.+|/gcs/files/.+", "file"),
        ("GET", r"/api/v1/models/requests/by-endpoint", "history"),
        ("GET", r"/queue/(?P<app>.+)/requests/(?P<id>[^/]+)/status/stream", "stream"),
        ("GET", r"/queue/(?P<app>.+)/requests/(?P<id>[^/]+)/status", "status"),
        ("PUT", r"/queue/(?P<app>.+)/requests/(?P<id>[^/]+)/cancel", "cancel"),
        ("GET", r"/queue/(?P<app>.+)/requests/(?P<id>[^/]+)", "result"),
        ("POST", r"/queue/(?P<app>.+)", "submit"),
        ("GET", r"/api/v1/models/pricing", "pricing"),
    ]

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/_emulator/"):
            return await self._control(request)
        route = self._route(request)
        if route is None:
            return web.json_response({"detail": f"No route for {request.method} {request.path}"}, status=404)
        kind, match = route
        body = await request.read()
        try:
            parsed = json.loads(body) if body and "json" in request.headers.get("content-type", "") else None
        except ValueError:
            parsed = None
        call = Call(kind, request.method, request.path, dict(request.query),
                    {k.lower(): v for k, v in request.headers.items()}, body, parsed, None, time.monotonic())
        with self._lock:
            self._calls.append(call)
            queue = self._faults.get(kind)
            fault = queue.pop(0) if queue else None
        handler = getattr(self, f"_{kind}")
        if fault is not None:
            refused = await self._fault_before(request, call, kind, fault)
            if refused is not None:
                return refused
        response = await handler(request, call, match.groupdict(), fault)
        if fault is not None:
            return await self._fault_after(request, call, response, fault)
        return self._record(call, self._echoed(call, response))

    def _route(self, request: web.Request) -> tuple[str, re.Match] | None:
        for method, pattern, kind in self._ROUTES:
            match = re.fullmatch(pattern, request.path)
            if match and request.method == method:
                return kind, match
        return None

    async def _fault_before(self, request: web.Request, call: Call, kind: str,
                            fault: Fault) -> web.StreamResponse | None:
        """The answer of a fault that strikes before the request is handled, or None."""
        if fault.delay and not fault.accept:
            await asyncio.sleep(fault.delay)
        if fault.drop == "before":
            return self._abort(request, call)
        if fault.status is not None and not fault.accept:
            return self._record(call, self._fault_response(fault))
        if fault.refuse:
            return self._record(call, web.json_response({"detail": "Method Not Allowed"}, status=405))
        if fault.endless and kind != "stream":
            return await self._endless(request, call)
        return None

    async def _fault_after(self, request: web.Request, call: Call, response: web.StreamResponse,
                           fault: Fault) -> web.StreamResponse:
        """The answer of a request that was handled, as ``fault`` changes it."""
        if fault.accept and fault.delay:
            await asyncio.sleep(fault.delay)  # done, then slow to answer: the client may give up
        if fault.drop == "after":
            return self._abort(request, call)
        if fault.patch or fault.pad:
            response = self._patched(response, fault)
        if fault.status is not None:
            return self._record(call, self._fault_response(fault))
        if fault.hide_request_id:
            request_id = response.headers.get("x-fal-request-id", "")
            headers = {"x-fal-request-id": request_id} if fault.request_id_header else {}
            return self._record(call, web.json_response({"status": "IN_QUEUE"}, headers=headers))
        return self._record(call, self._echoed(call, response))

    @staticmethod
    def _patched(response: web.StreamResponse, fault: Fault) -> web.StreamResponse:
        data = json.loads(response.body)
        data.update(fault.patch or {})
        if fault.pad:
            data["padding"] = "x" * fault.pad
        patched = web.json_response(data, status=response.status)
        for name, value in response.headers.items():
            if name.lower() not in ("content-type", "content-length"):
                patched.headers[name] = value
        return patched

    def _echoed(self, call: Call, response: web.StreamResponse) -> web.StreamResponse:
        """In hostile mode, the caller's Authorization in every form inside the answer."""
        auth = call.headers.get("authorization")
        if not self.echo_key or not auth or not isinstance(response, web.Response) or response.body is None:
            return response
        response.headers["X-Echo-Authorization"] = auth
        if response.content_type == "application/json":
            data = json.loads(response.body)
            if isinstance(data, dict):
                if isinstance(data.get("detail"), str):
                    data["detail"] += f" (request sent with Authorization: {auth})"
                data["echo"] = {"authorization": auth, "escaped": "__ESCAPED__", "url_encoded": quote(auth, safe="")}
            text = json.dumps(data).replace('"__ESCAPED__"', '"' + "".join(f"\\u{ord(c):04x}" for c in auth) + '"')
            response.body = text.encode()
        elif response.content_type.startswith("text/"):
            response.body = response.body + f"<!-- Authorization: {auth} -->".encode()
        return response

    async def _endless(self, request: web.Request, call: Call) -> web.StreamResponse:
        """A JSON answer that never ends (stops at 1 GiB or when the client goes)."""
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        call.status = 200
        await response.write(b'{"padding": "')
        chunk = b"x" * 65536
        for _ in range(16384):
            await response.write(chunk)
        return response

    @staticmethod
    def _record(call: Call, response: web.StreamResponse) -> web.StreamResponse:
        call.status = response.status
        return response

    @staticmethod
    def _abort(request: web.Request, call: Call) -> web.StreamResponse:
        call.status = None
        request.transport.abort()
        # aiohttp must not write anything after the abort; raising ends the handler quietly.
        raise asyncio.CancelledError()

    @staticmethod
    def _fault_response(fault: Fault) -> web.Response:
        headers = dict(fault.headers or {})
        if fault.retry_after is not None:
            headers["Retry-After"] = f"{fault.retry_after:g}"
        if fault.status >= 500 and not fault.request_id_header and fault.body is None:
            return web.Response(status=fault.status, text=NGINX_502, content_type="text/html", headers=headers)
        if fault.request_id_header:
            headers["x-fal-request-id"] = str(uuid.uuid4())
        body = fault.body if fault.body is not None else {"detail": f"Emulated error {fault.status}"}
        if isinstance(body, (dict, list)):
            return web.json_response(body, status=fault.status, headers=headers)
        return web.Response(status=fault.status, text=str(body), headers=headers)

    def _authorized(self, call: Call) -> bool:
        return call.headers.get("authorization") == f"Key {self.key}"

    def _unauthorized(self, app: str = "") -> web.Response:
        return web.json_response({"detail": f"Cannot access application '{app}'. Authentication is required "
                                            "to access this application."}, status=401)

    # --- queue -----------------------------------------------------------------------------

    @staticmethod
    def _app_base(app: str) -> str:
        parts = [p for p in app.split("/") if p]
        if parts and parts[0] in NAMESPACES:
            return "/".join(parts[:3])
        return "/".join(parts[:2])

    async def _submit(self, request, call, groups, fault) -> web.Response:
        app = groups["app"]
        if not self._authorized(call):
            return self._unauthorized(app)
        if not isinstance(call.json, dict):
            return web.json_response({"detail": [{"loc": ["body"], "msg": "Input should be a JSON object",
                                                  "type": "model_attributes_type"}]}, status=422)
        # Decoding the picture and making the results run in worker threads, the results after the
        # answer: fal answers a submit at once, and one client's pictures must not hold up others.
        problems, source = await asyncio.to_thread(self._validate, call.json)
        if problems:
            return web.json_response({"detail": problems}, status=422)
        with self._lock:
            options = self._next_jobs.pop(0) if self._next_jobs else {}
        job = Job(
            id=str(uuid.uuid4()), app=app, input=call.json, created=time.monotonic(),
            queue_seconds=options.get("queue_seconds", self.queue_seconds),
            job_seconds=options.get("job_seconds", self.job_seconds),
            queue_positions=options.get("queue_positions", self.queue_positions),
            fail=options.get("fail"), error_type=options.get("error_type"),
        )
        job.ready = asyncio.ensure_future(asyncio.to_thread(self._set_output, job, source))
        with self._lock:
            self.jobs[job.id] = job
        self._loop.create_task(self._announce(job))
        base = f"{self.queue_url}/{self._app_base(app)}/requests/{job.id}"
        return web.json_response(
            {"request_id": job.id, "response_url": base, "status_url": base + "/status",
             "cancel_url": base + "/cancel", "queue_position": job.timeline(time.monotonic())[1] or 0},
            headers={"x-fal-request-id": job.id})

    def _set_output(self, job: Job, source: np.ndarray) -> None:
        job.output = self._make_output(job, source)

    def _validate(self, data: dict) -> tuple[list, np.ndarray | None]:
        problems = []

        def bad(name, msg, kind="value_error"):
            problems.append({"loc": ["body", name], "msg": msg, "type": kind, "input": data.get(name)})

        if not isinstance(data.get("prompt"), str):
            bad("prompt", "Field required" if "prompt" not in data else "Input should be a valid string", "missing")
        source = None
        url = data.get("image_url")
        if not isinstance(url, str):
            bad("image_url", "Field required", "missing")
        else:
            source = self._load_input(url)
            if source is None:
                bad("image_url", f"Could not download the file from {url[:60]!r}", "file_download_error")
        self._check_values(data, bad)
        return problems, source

    @staticmethod
    def _check_values(data: dict, bad: Callable[[str, str], None]) -> None:
        """The optional fields' types and ranges, as fal's pydantic model checks them."""
        checks = {
            "num_inference_steps": (int, 1, 50), "num_images": (int, 1, 4), "seed": (int, None, None),
            "guidance_scale": ((int, float), 0, 20), "strength": ((int, float), 0, 1),
        }
        for name, (kind, low, high) in checks.items():
            if name in data and data[name] is not None:
                value = data[name]
                if isinstance(value, bool) or not isinstance(value, kind):
                    bad(name, "Input should be a valid number")
                elif low is not None and not low <= value <= high:
                    bad(name, f"Input should be between {low} and {high}")
        for name in ("prompt_expansion", "sync_mode", "enable_safety_checker"):
            if name in data and not isinstance(data[name], bool):
                bad(name, "Input should be a valid boolean")
        if "negative_prompt" in data and not isinstance(data["negative_prompt"], str):
            bad("negative_prompt", "Input should be a valid string")
        size = data.get("image_size")
        if size is not None and not FalEmulator._is_image_size(size):
            bad("image_size", f"Input should be one of {', '.join(PRESETS)} or an object with width and height")

    @staticmethod
    def _is_image_size(size: Any) -> bool:
        if isinstance(size, str):
            return size in PRESETS
        return (isinstance(size, dict) and set(size) == {"width", "height"}
                and all(isinstance(v, int) and 1 <= v <= 14142 for v in size.values()))

    def _load_input(self, url: str) -> np.ndarray | None:
        if url.startswith("data:"):
            try:
                data = base64.b64decode(url.partition(",")[2], validate=True)
            except ValueError:
                return None
        else:
            with self._lock:
                stored = self.files.get(url.split("?", 1)[0])
            if stored is None:
                return None
            data = stored[0]
        return _decoded(data)

    def _make_output(self, job: Job, source: np.ndarray) -> dict:
        data = job.input
        size = data.get("image_size")
        size = PRESETS[size] if isinstance(size, str) else (size["width"], size["height"]) if size else None
        count = data.get("num_images") or 1
        flagged = "nsfw" in data["prompt"].lower() and data.get("enable_safety_checker", True)
        images = []
        for k in range(count):
            png, (height, width) = _output_png(source, k, size)
            if data.get("sync_mode"):
                url = "data:image/png;base64," + base64.b64encode(png).decode()
            else:
                url = self._store(f"{job.id}-{k}.png", png, "image/png")
            images.append({"url": url, "width": width, "height": height, "content_type": "image/png"})
        prompt = data["prompt"] + (", highly detailed" if data.get("prompt_expansion") else "")
        return {"images": images, "timings": {"inference": job.job_seconds},
                "seed": data["seed"] if data.get("seed") is not None else secrets.randbelow(2**32),
                "has_nsfw_concepts": [bool(flagged)] * count, "prompt": prompt, "num_images": count}

    def _status_body(self, job: Job, with_logs: bool) -> dict:
        now = time.monotonic()
        state, position, logs = job.timeline(now)
        lines = [{"message": f"Step {i + 1}/{LOG_LINES}", "level": "INFO", "source": "USER",
                  "timestamp": datetime.fromtimestamp(1_700_000_000 + i, timezone.utc).isoformat()}
                 for i in range(logs)]
        base = f"{self.queue_url}/{self._app_base(job.app)}/requests/{job.id}"
        body: dict[str, Any] = {"status": "COMPLETED" if state == "CANCELLED" else state,
                                "request_id": job.id, "response_url": base,
                                "logs": lines if with_logs else None}
        if state == "IN_QUEUE":
            body["queue_position"] = position
        if state in ("COMPLETED", "CANCELLED"):
            body["metrics"] = {"inference_time": job.job_seconds}
        if state == "CANCELLED":
            body.update(error="Request cancelled", error_type="RequestCancelled")
        elif state == "COMPLETED" and job.fail:
            body.update(error=job.fail, error_type=job.error_type or "AppError")
        if self.echo_key:
            auth = f"Key {self.key}"
            for line in lines:
                line["message"] += f" (Authorization: {auth})"
            if body.get("error"):
                body["error"] += f" (Authorization: {auth})"
            body["echo"] = {"authorization": auth, "url_encoded": quote(auth, safe="")}
        return body

    def _find(self, call: Call, groups: dict) -> tuple[Job | None, web.Response | None]:
        if not self._authorized(call):
            return None, self._unauthorized(groups.get("app", ""))
        with self._lock:
            job = self.jobs.get(groups["id"])
        if job is None or job.expired:
            return None, web.json_response({"detail": "Request not found"}, status=404)
        return job, None

    @staticmethod
    def _wants_logs(request: web.Request) -> bool:
        return request.query.get("logs", "0").lower() in ("1", "true")

    async def _status(self, request, call, groups, fault) -> web.Response:
        job, error = self._find(call, groups)
        if error is not None:
            return error
        return web.json_response(self._status_body(job, self._wants_logs(request)))

    async def _stream(self, request, call, groups, fault) -> web.StreamResponse:
        job, error = self._find(call, groups)
        if error is not None:
            return error
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        call.status = 200
        last = None
        sent = 0
        if fault is not None and fault.endless:
            # One line with no end: a client that buffers whole lines grows without bound.
            await response.write(b"data: ")
            chunk = b"x" * 65536
            for _ in range(16384):
                await response.write(chunk)
            return response
        while True:
            body = self._status_body(job, self._wants_logs(request))
            if body != last:
                await response.write(f"data: {json.dumps(body)}\n\n".encode())
                last = body
                sent += 1
                if fault is not None and fault.drop_mid and sent == 1:
                    request.transport.abort()
                    raise asyncio.CancelledError()
                if body["status"] == "COMPLETED":
                    break
            await self._until_change(job)
        await response.write_eof()
        return response

    async def _until_change(self, job: Job) -> None:
        """Sleep until the job's status will change, or a cancel arrives."""
        wait = job.next_change(time.monotonic()) - time.monotonic()
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=max(min(wait, 5.0), 0.0) + 0.001)
            except asyncio.TimeoutError:
                pass

    async def _announce(self, job: Job) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _result(self, request, call, groups, fault) -> web.Response:
        job, error = self._find(call, groups)
        if error is not None:
            return error
        state = job.timeline(time.monotonic())[0]
        if state == "CANCELLED":
            return web.json_response({"detail": "Request was cancelled"}, status=400)
        if state != "COMPLETED":
            return web.json_response({"detail": "Request is still in progress"}, status=400)
        if job.fail:
            status = 422 if "validation" in (job.error_type or "").lower() else 500
            return web.json_response({"detail": job.fail}, status=status,
                                     headers={"x-fal-error-type": job.error_type or "AppError",
                                              "x-fal-request-id": job.id})
        await job.ready
        return web.json_response(job.output, headers={"x-fal-request-id": job.id})

    async def _cancel(self, request, call, groups, fault) -> web.Response:
        job, error = self._find(call, groups)
        if error is not None:
            return error
        now = time.monotonic()
        if fault is not None and fault.complete and job.timeline(now)[0] != "COMPLETED":
            job.queue_seconds = min(job.queue_seconds, now - job.created)
            job.job_seconds = max(now - job.created - job.queue_seconds, 0.0)
        state = job.timeline(now)[0]
        if state in ("COMPLETED", "CANCELLED"):
            return web.json_response({"status": "ALREADY_COMPLETED"}, status=400)
        job.cancelled_at = time.monotonic()
        self._loop.create_task(self._announce(job))
        return web.json_response({"status": "CANCELLATION_REQUESTED"}, status=202)

    # --- Platform API: the request history ----------------------------------------------------

    async def _history(self, request, call, groups, fault) -> web.Response:
        if not self._authorized(call):
            return web.json_response({"detail": "Invalid API key"}, status=401)
        query = request.query
        endpoint = query.get("endpoint_id")
        if not endpoint:
            return web.json_response({"detail": [{"loc": ["query", "endpoint_id"], "msg": "Field required",
                                                  "type": "missing"}]}, status=422)
        try:
            limit = min(max(int(query.get("limit", "50")), 1), 100)
            offset = int(query.get("cursor", "0"))
            start = _parse_time(query["start"]) if "start" in query else time.time() - (
                90 * 86400 if "request_id" in query else 86400)
            end = _parse_time(query["end"]) if "end" in query else None
        except ValueError as exc:
            return web.json_response({"detail": f"Bad query: {exc}"}, status=422)
        now = time.time()
        with self._lock:
            jobs = [job for job in self.jobs.values()
                    if job.app == endpoint and job.ended_at() <= now and job.sent_at >= start
                    and (end is None or job.sent_at <= end)
                    and query.get("request_id") in (None, job.id)]
        wanted = {"success": lambda c: c < 400, "error": lambda c: c >= 500,
                  "user_error": lambda c: 400 <= c < 500}.get(query.get("status", ""), lambda c: True)
        jobs = sorted((job for job in jobs if wanted(job.history_code())), key=Job.ended_at)
        page = jobs[offset:offset + limit]
        payloads = query.get("expand") == "payloads"
        iso = lambda t: datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")  # noqa: E731
        items = []
        for job in page:
            code = job.history_code()
            item = {"request_id": job.id, "endpoint_id": job.app, "sent_at": iso(job.sent_at),
                    "started_at": iso(job.sent_at + min(job.queue_seconds, job.ended_at() - job.sent_at)),
                    "ended_at": iso(job.ended_at()), "status_code": code,
                    "duration": round(job.ended_at() - job.sent_at, 3)}
            if payloads:
                item.update(json_input=job.input, json_output=job.output if code == 200 else {"detail": job.fail})
            items.append(item)
        more = offset + limit < len(jobs)
        return web.json_response({"items": items, "next_cursor": str(offset + limit) if more else None,
                                  "has_more": more})

    # --- storage ---------------------------------------------------------------------------

    def _store(self, name: str, data: bytes, content_type: str) -> str:
        url = f"{self.cdn_url}/files/{secrets.token_hex(4)}/{name}"
        with self._lock:
            self.files[url] = (data, content_type)
        return url

    def _token_ok(self, call: Call) -> bool:
        scheme, _, token = call.headers.get("authorization", "").partition(" ")
        return scheme == "Bearer" and token in self._tokens

    async def _token(self, request, call, groups, fault) -> web.Response:
        if not self._authorized(call):
            return self._unauthorized()
        token = secrets.token_hex(16)
        self._tokens.add(token)
        expires = datetime.now(timezone.utc) + timedelta(hours=1)
        return web.json_response({"token": token, "token_type": "Bearer", "base_url": self.cdn_url,
                                  "expires_at": expires.isoformat()})

    async def _upload(self, request, call, groups, fault) -> web.Response:
        if not self._token_ok(call):
            return web.json_response({"detail": "Invalid token"}, status=401)
        name = call.headers.get("x-fal-file-name") or hashlib.sha256(call.body).hexdigest()[:16]
        url = self._store(name, call.body, call.headers.get("content-type", "application/octet-stream"))
        return web.json_response({"access_url": url})

    async def _multipart_create(self, request, call, groups, fault) -> web.Response:
        if not self._token_ok(call):
            return web.json_response({"detail": "Invalid token"}, status=401)
        name = call.headers.get("x-fal-file-name") or "upload.bin"
        url = f"{self.cdn_url}/files/{secrets.token_hex(4)}/{name}"
        upload_id = secrets.token_hex(8)
        with self._lock:
            self._multipart[upload_id] = {"url": url, "parts": {},
                                          "type": call.headers.get("content-type", "application/octet-stream")}
        return web.json_response({"access_url": url, "uploadId": upload_id})

    async def _multipart_part(self, request, call, groups, fault) -> web.Response:
        with self._lock:
            upload = self._multipart.get(groups["upload"])
        if not self._token_ok(call) or upload is None:
            return web.json_response({"detail": "Unknown upload or invalid token"}, status=404)
        etag = hashlib.md5(call.body).hexdigest()
        upload["parts"][int(groups["part"])] = (etag, call.body)
        return web.Response(status=200, headers={"ETag": etag})

    async def _multipart_complete(self, request, call, groups, fault) -> web.Response:
        with self._lock:
            upload = self._multipart.get(groups["upload"])
        if not self._token_ok(call) or upload is None:
            return web.json_response({"detail": "Unknown upload or invalid token"}, status=404)
        parts = sorted((p["partNumber"], p["etag"]) for p in (call.json or {}).get("parts", []))
        stored = upload["parts"]
        if [n for n, _ in parts] != sorted(stored) or any(stored[n][0] != etag for n, etag in parts):
            return web.json_response({"detail": "Parts do not match the upload"}, status=400)
        with self._lock:
            self.files[upload["url"]] = (b"".join(stored[n][1] for n, _ in parts), upload["type"])
        return web.json_response({"access_url": upload["url"]})

    async def _initiate(self, request, call, groups, fault) -> web.Response:
        if not self._authorized(call):
            return self._unauthorized()
        data = call.json or {}
        name = f"{secrets.token_hex(4)}-{data.get('file_name', 'upload.bin')}"
        # Like fal's signed Google Cloud Storage URLs, these live outside fal's API.
        file_url = f"{self.base_url}/gcs/files/{name}"
        with self._lock:
            self._multipart["put:" + name] = {"url": file_url, "type": data.get("content_type")}
        return web.json_response({"upload_url": f"{self.base_url}/gcs/put/{name}?signature=s3cr3t",
                                  "file_url": file_url})

    async def _put_file(self, request, call, groups, fault) -> web.Response:
        with self._lock:
            pending = self._multipart.get("put:" + groups["name"])
        if pending is None or request.query.get("signature") != "s3cr3t":
            return web.json_response({"detail": "Bad upload URL"}, status=403)
        with self._lock:
            self.files[pending["url"]] = (call.body, call.headers.get("content-type") or pending["type"])
        return web.Response(status=200)

    async def _file(self, request, call, groups, fault) -> web.Response:
        with self._lock:
            stored = self.files.get(f"{self.base_url}{request.path}") or self.files.get(
                self.cdn_url.removesuffix("/cdn") + request.path)
        if stored is None:
            return web.json_response({"detail": "File not found"}, status=404)
        return web.Response(body=stored[0], content_type=stored[1].split(";")[0])

    # --- Platform API --------------------------------------------------------------------------

    async def _pricing(self, request, call, groups, fault) -> web.Response:
        if not self._authorized(call):
            return web.json_response({"detail": "Invalid API key"}, status=401)
        if not self.pricing_access:
            return web.json_response({"detail": "This key is not allowed to access the pricing API"}, status=403)
        ids = request.query.getall("endpoint_id", [])
        if not 1 <= len(ids) <= 50:
            return web.json_response({"detail": [{"loc": ["query", "endpoint_id"], "type": "value_error",
                                                  "msg": "Give between 1 and 50 endpoint ids"}]}, status=422)
        prices = [{"endpoint_id": i, "unit_price": self.prices[i][0], "unit": self.prices[i][1],
                   "currency": self.prices[i][2]} for i in ids if i in self.prices]
        return web.json_response({"prices": prices, "next_cursor": None, "has_more": False})

    # --- control API for a ComfyUI in another process ------------------------------------------

    async def _control(self, request: web.Request) -> web.Response:
        action = request.path.removeprefix("/_emulator/")
        data = await request.json() if request.can_read_body else {}
        if action == "faults" and request.method == "POST":
            kind = data.pop("kind")
            self.fault(kind, **data)
        elif action == "config" and request.method == "POST":
            for name in ("job_seconds", "queue_seconds", "queue_positions", "pricing_access", "echo_key"):
                if name in data:
                    setattr(self, name, data[name])
        elif action == "reset" and request.method == "POST":
            self.reset()
        elif action == "connections" and request.method == "GET":
            return web.json_response(self.connections())
        elif action == "drop_connections" and request.method == "POST":
            await self._drop()
        elif action == "calls" and request.method == "GET":
            return web.json_response([{"kind": c.kind, "method": c.method, "path": c.path, "query": c.query,
                                       "status": c.status, "json": c.json if c.kind != "submit" else None}
                                      for c in self.calls()])
        else:
            return web.json_response({"detail": "unknown control action"}, status=404)
        return web.json_response({"ok": True})


def _parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the fal emulator on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--key", default="test-key-id:test-key-secret")
    parser.add_argument("--job-seconds", type=float, default=0.2)
    parser.add_argument("--rtt", type=float, default=0.0, help="round trip time in seconds (network model)")
    parser.add_argument("--tls", action="store_true", help="serve TLS 1.3 with a test CA (ca_file)")
    args = parser.parse_args()
    emulator = FalEmulator(key=args.key, job_seconds=args.job_seconds, port=args.port, rtt=args.rtt,
                           tls=args.tls).start()
    print(json.dumps({"queue_url": emulator.queue_url, "rest_url": emulator.rest_url,
                      "cdn_url": emulator.cdn_url, "api_url": emulator.api_url, "key": emulator.key,
                      "ca_file": emulator.ca_file}), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        emulator.stop()


if __name__ == "__main__":
    sys.exit(main())
