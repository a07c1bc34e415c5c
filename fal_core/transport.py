"""One HTTP call to fal: authentication, retries and turning failures into fal_core's errors.

Every other module goes through :meth:`Transport.request` or :meth:`Transport.stream`, so the
retry policy, the key handling and the error messages live in one place. The key is only ever
sent to the configured queue and REST hosts, never to a CDN or any URL a result points at.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Mapping

import httpx

from . import __version__
from .config import FalConfig
from .connections import Pool
from .errors import (
    AuthError, FieldError, FileError, HTTPStatusError, ResponseTooLarge, TransportError, ValidationError,
)
from .redaction import redact
from .retry import (
    DEFAULT_RETRY, RetryPolicy, retry_after_seconds, should_retry_exception, should_retry_response, surely_not_sent,
)

log = logging.getLogger("fal_core")

# httpx logs every call at INFO ("HTTP Request: POST … 200"), and ComfyUI's log shows INFO: five
# lines a run drowned its own. Only fal_core's calls are silenced (fal_core logs them at DEBUG);
# other httpx users in the process keep theirs.
_OWN_CALL = contextvars.ContextVar("fal_core_own_call", default=False)


class _WithoutOwnCalls(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _OWN_CALL.get()


logging.getLogger("httpx").addFilter(_WithoutOwnCalls())

USER_AGENT = f"comfyui-fal-sd3/{__version__} (fal_core; python)"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
# fal's JSON answers are a few kB; a result with inline pictures (sync_mode) a few MB. Past this an
# answer is refused instead of growing the process (a 60 MB "result" was once copied whole).
MAX_ANSWER_BYTES = 16 * 1024 * 1024
# Of an error answer only the start is ever shown; the rest (maybe endless) is not read.
MAX_ERROR_BYTES = 64 * 1024


def new_pool(timeout: httpx.Timeout | float = DEFAULT_TIMEOUT) -> Pool:
    """A connection pool with fal_core's User-Agent. It honours HTTP(S)_PROXY / NO_PROXY and
    SSL_CERT_FILE as any httpx client does."""
    return Pool(timeout, {"User-Agent": USER_AGENT})


class Transport:
    """An httpx.AsyncClient with fal's authentication, our retry policy and error mapping."""

    def __init__(
        self,
        config: FalConfig,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        pool: Pool | None = None,
    ) -> None:
        self.config = config
        self.retry = retry
        # The key goes on each request, never on the pool: one pool serves every configuration.
        self.pool = pool or new_pool(timeout)
        self._http = self.pool.http
        self._owns_pool = pool is None

    async def aclose(self) -> None:
        if self._owns_pool:
            await self.pool.aclose()

    def preconnect(self, url: str, count: int = 1) -> None:
        """Open ``count`` connections to ``url``'s host now, unless that many are idle already."""
        self.pool.preconnect(url, count)

    def _headers(self, url: str, headers: Mapping[str, str] | None) -> dict[str, str]:
        merged = dict(headers or {})
        if "Authorization" not in merged and self.config.is_fal_host(url):
            merged["Authorization"] = self.config.authorization()
        return merged

    async def request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        idempotent: bool = True,
        retry: RetryPolicy | None = None,
        max_bytes: int | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send one call, retrying as the policy allows; returns a 2xx response or raises.

        ``what`` names the call in messages ("status of request abc"). Non-idempotent calls
        (submits) raise :class:`TransportError` with ``maybe_delivered=True`` when the failure
        leaves open whether the server received the request. A body over ``max_bytes`` is
        refused with :class:`FileError` without being read to the end; without ``max_bytes``, an
        answer over MAX_ANSWER_BYTES is refused with :class:`ResponseTooLarge`.
        """
        policy = retry or self.retry
        request = self._build(method, url, what, kwargs)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._send(request)
                try:
                    body = await _read(response, max_bytes, what)
                finally:
                    await response.aclose()
            except httpx.TransportError as exc:
                if attempt < policy.attempts and should_retry_exception(exc, idempotent=idempotent):
                    await self._wait(policy, attempt, None, what, _describe(exc))
                    continue
                raise self._transport_error(exc, url, what, attempt, idempotent) from None
            response = _with_body(response, body)
            if response.is_success:
                return response
            if attempt < policy.attempts and should_retry_response(response, idempotent=idempotent):
                await self._wait(policy, attempt, retry_after_seconds(response), what, f"HTTP {response.status_code}")
                continue
            raise self.status_error(response, what)

    def _build(self, method: str, url: str, what: str, kwargs: dict[str, Any]) -> httpx.Request:
        """The request, once ``url`` is known to be one the key may go to (see ``_check_url``)."""
        self._check_url(url, what)
        return self._http.build_request(method, url, headers=self._headers(url, kwargs.pop("headers", None)), **kwargs)

    @asynccontextmanager
    async def stream(self, method: str, url: str, *, what: str, **kwargs: Any) -> AsyncIterator[httpx.Response]:
        """Open a streamed response (no retries: the caller decides how to resume)."""
        request = self._build(method, url, what, kwargs)
        try:
            response = await self._send(request)
            try:
                if not response.is_success:
                    raise self.status_error(_with_body(response, await _read_error(response)), what)
                yield response
            finally:
                await response.aclose()
        except httpx.TransportError as exc:
            raise self._transport_error(exc, url, what, 1, True) from None

    async def _send(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` streamed; only the sending is marked as our call (see ``_OWN_CALL``):
        a stream may be read on from other tasks."""
        own = _OWN_CALL.set(True)
        try:
            response = await self._http.send(request, stream=True)
        finally:
            _OWN_CALL.reset(own)
        log.debug("fal: %s %s -> HTTP %d", request.method, _safe_url(str(request.url)), response.status_code)
        return response

    @staticmethod
    def _check_url(url: str, what: str) -> None:
        """A URL that cannot be fetched is a TransportError naming it, before anything is sent
        (httpx would raise InvalidURL, or an ExceptionGroup for a port out of range)."""
        problem = _url_problem(url)
        if problem is not None:
            raise TransportError(f"{what}: cannot use the URL {_safe_url(url)!r}: {problem}. Nothing was sent.",
                                 url=_safe_url(url), cause=problem)

    async def _wait(self, policy: RetryPolicy, attempt: int, retry_after: float | None, what: str, reason: str) -> None:
        delay = policy.delay(attempt, retry_after)
        log.info("fal: %s failed (%s); retry %d of %d in %.2fs", what, reason, attempt, policy.attempts - 1, delay)
        await asyncio.sleep(delay)

    def _transport_error(self, exc: httpx.TransportError, url: str, what: str, attempts: int,
                         idempotent: bool) -> TransportError:
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        return TransportError(
            self.config.redact(f"{what} failed{tries}: {_describe(exc)} ({_safe_url(url)}). "
                               "Check the network connection and the fal URLs "
                               "(FAL_QUEUE_URL, FAL_REST_URL, FAL_CDN_URL)."),
            url=_safe_url(url),
            attempts=attempts,
            maybe_delivered=not idempotent and not surely_not_sent(exc),
            cause=_describe(exc),
        )

    def status_error(self, response: httpx.Response, what: str) -> HTTPStatusError:
        """The error for fal's non-2xx answer, with fal's own ``detail`` and what to do.

        Only fal's own hosts have their answer quoted: a URL from an answer may point at any
        server (an internal service's page must not end up in a node's error), and only the hosts
        that get the key can refuse it.
        """
        status = response.status_code
        url = str(response.url)
        if not (self.config.is_fal_host(url) or url.startswith(self.config.cdn_url + "/")):
            host = response.url.host
            return HTTPStatusError(
                f"{host} answered HTTP {status} {response.reason_phrase} for {what} ({_safe_url(url)}); "
                "it is not one of fal's hosts, so its answer is not shown.", status_code=status, url=_safe_url(url))
        detail = _detail(response)
        request_id = response.headers.get("x-fal-request-id")
        error_type = response.headers.get("x-fal-error-type")
        common = dict(status_code=status, detail=detail, url=_safe_url(str(response.url)),
                      request_id=request_id, error_type=error_type)
        redact = self.config.redact
        if status in (401, 403) and self.config.is_fal_host(url):
            where, todo = self.config.key_origin()
            if status == 401:
                text = (f"fal refused the API key from {where} (HTTP 401) for {what}: {_detail_text(detail)}. "
                        f"To fix: {todo}.")
            else:
                text = (f"fal does not let the API key from {where} do this (HTTP 403: {what}): "
                        f"{_detail_text(detail)}. "
                        f"To fix: check the key's scope at https://fal.ai/dashboard/keys, or {todo}.")
            return AuthError(redact(text), **common)
        if status == 422 and isinstance(detail, list):
            fields = [_field_error(item) for item in detail]
            lines = "\n".join(f"  - {f.field}: {f.message}" for f in fields)
            return ValidationError(redact(f"fal rejected the input of {what} (HTTP 422):\n{lines}"),
                                   field_errors=fields, **common)
        return HTTPStatusError(redact(
            f"fal answered HTTP {status} {response.reason_phrase} for {what}: {_detail_text(detail)}"), **common)


def _with_body(response: httpx.Response, body: bytes) -> httpx.Response:
    """``response`` as a plain response holding ``body``, which httpx has already decoded: the
    rebuilt one must not decode it again."""
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() != "content-encoding"]
    return httpx.Response(response.status_code, headers=headers, content=body, request=response.request)


async def _read(response: httpx.Response, max_bytes: int | None, what: str) -> bytes:
    """The body, bounded: a file by ``max_bytes`` (FileError past it), any other answer by
    MAX_ANSWER_BYTES (ResponseTooLarge), an error answer by MAX_ERROR_BYTES (cut there)."""
    if not response.is_success:
        return await _read_error(response)
    limit, error = (max_bytes, FileError) if max_bytes is not None else (MAX_ANSWER_BYTES, ResponseTooLarge)
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise error(f"The {what} is {int(declared):,} bytes, over the limit of {limit:,} bytes; it was not downloaded.")
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise error(f"The {what} is over the limit of {limit:,} bytes; the download was stopped.")
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_error(response: httpx.Response) -> bytes:
    """The start of an error answer: only its first words are ever shown, and it may not end."""
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= MAX_ERROR_BYTES:
            break
    return b"".join(chunks)[:MAX_ERROR_BYTES]


_HOST = re.compile(r"[A-Za-z0-9._:\[\]-]+")


def _url_problem(url: str) -> str | None:
    try:
        parsed = httpx.URL(url)
        port = parsed.port
    except (httpx.InvalidURL, ValueError) as exc:
        return f"it is malformed ({exc})"
    if parsed.scheme not in ("http", "https"):
        return "only http:// and https:// URLs are fetched"
    if not parsed.host:
        return "it names no host"
    if not _HOST.fullmatch(parsed.host):
        return f"its host {parsed.host!r} is not a host name or address"
    if port is not None and not 0 < port < 65536:
        return f"port {port} is out of range"
    return None


def _detail(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return redact(text)[:300] if text else None
    if isinstance(body, Mapping):
        return body.get("detail", body.get("error", body))
    return body


def _detail_text(detail: Any) -> str:
    if detail is None:
        return "no details given"
    if isinstance(detail, str):
        return detail
    return redact(str(detail))[:500]


def _field_error(item: Any) -> FieldError:
    if not isinstance(item, Mapping):
        return FieldError("input", None, str(item))
    loc = [str(part) for part in item.get("loc") or [] if part != "body"]
    return FieldError(".".join(loc) or "input", item.get("input"), str(item.get("msg", item)))


def _describe(exc: httpx.TransportError) -> str:
    name = type(exc).__name__
    text = str(exc)
    return f"{name}: {text}" if text else name


def _safe_url(url: str) -> str:
    """The URL without its query: signed upload URLs carry credentials there."""
    return url.split("?", 1)[0]
