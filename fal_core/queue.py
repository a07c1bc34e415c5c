"""fal's queue: submit, status (polled or streamed), result, cancel, and the waiting engine.

:meth:`QueueClient.wait` is the one engine every front end uses: it follows a request over the
status stream (completion is seen within milliseconds) and falls back to polling when the stream
is refused or keeps dropping. It reports changes through one callback, enforces an overall
timeout; on a timeout, or when its task is cancelled, it cancels the request at fal before raising.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, AsyncGenerator, AsyncIterator, Callable, Mapping

import httpx

from .errors import (
    AppError, AuthError, FalError, FieldError, HTTPStatusError, InputError, RequestTimeout,
    ResponseError, ResponseTooLarge, ResultError, SubmitUncertainError, TransportError, ValidationError,
)
from .phase import Phase
from .redaction import excerpt
from .retry import NO_RETRY, SUBMIT_REFUSED, RetryPolicy
from .sse import iter_data, iter_lines
from .status import AppId, LogLine, RequestHandle, Status, check_request_id
from .transport import Transport

log = logging.getLogger("fal_core")

PRIORITIES = ("normal", "low")
# After this many stream failures in a row the engine stops reconnecting and polls.
STREAM_RECONNECTS = 3
# A stream may be silent for a long time in a queue; past this the engine reconnects.
STREAM_READ_TIMEOUT = 60.0
CANCEL_RETRY = RetryPolicy(attempts=3, base=0.2, cap=1.0)
# fal ends the stream right after COMPLETED; a stream still open this long after it is closed.
STREAM_DRAIN = 0.1


@dataclass(frozen=True)
class Update:
    """What changed in a request: sent to ``on_update`` whenever phase, position or logs move.

    ``phase`` is IN_QUEUE, IN_PROGRESS or COMPLETED (the img2img job adds UPLOADING, SUBMITTING,
    CHECKING_HISTORY and DOWNLOADING around them).
    """

    request_id: str | None
    phase: Phase
    queue_position: int | None = None
    new_logs: tuple[LogLine, ...] = ()
    elapsed: float = 0.0


OnUpdate = Callable[[Update], None]


class _Tracker:
    """Turns a series of status reports into Updates: only what is new is reported."""

    def __init__(self, handle: RequestHandle, on_update: OnUpdate | None, started: float) -> None:
        self.handle = handle
        self.on_update = on_update
        self.started = started
        self.phase: Phase | None = None
        self.position: int | None = None
        self._seen: set[tuple[str, str]] = set()

    def feed(self, status: Status) -> None:
        phase = Phase(status.state.lower())
        position = status.queue_position if phase is Phase.IN_QUEUE else None
        new_logs = []
        for line in status.logs or ():
            key = (line.timestamp, line.message)
            if key not in self._seen:
                self._seen.add(key)
                new_logs.append(line)
        if phase == self.phase and position == self.position and not new_logs:
            return
        self.phase, self.position = phase, position
        if self.on_update is not None:
            self.on_update(Update(self.handle.request_id, phase, position, tuple(new_logs),
                                  time.monotonic() - self.started))


@dataclass(frozen=True)
class Completion:
    """A finished request: its handle, final status (logs, metrics) and output JSON."""

    handle: RequestHandle
    status: Status
    output: Any


class QueueClient:
    def __init__(self, transport: Transport, *, poll_interval: float = 0.2, max_poll_interval: float = 2.0) -> None:
        self.transport = transport
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval

    @property
    def queue_url(self) -> str:
        return self.transport.config.queue_url

    def handle(self, app_id: str, request_id: str) -> RequestHandle:
        """The handle of a request known only by its id."""
        return RequestHandle.from_request_id(self.queue_url, app_id, request_id)

    async def submit(
        self,
        app_id: str,
        payload: Mapping[str, Any],
        *,
        webhook_url: str | None = None,
        runner_hint: str | None = None,
        priority: str | None = None,
        start_timeout: float | None = None,
        fingerprint: str | None = None,
    ) -> RequestHandle:
        """Queue one request. Retried only where fal surely never received it.

        ``start_timeout`` asks fal to give up if the request has not started after that many
        seconds. ``fingerprint`` (of the payload) is carried by a SubmitUncertainError.
        """
        app = AppId.parse(app_id)
        headers = {}
        if runner_hint:
            headers["X-Fal-Runner-Hint"] = runner_hint
        if priority is not None:
            if priority not in PRIORITIES:
                raise InputError([FieldError("priority", priority, f"use one of {', '.join(PRIORITIES)}")])
            headers["X-Fal-Queue-Priority"] = priority
        if start_timeout is not None:
            if start_timeout <= 1:
                raise InputError([FieldError("start_timeout", start_timeout, "fal needs more than 1 second")])
            headers["X-Fal-Request-Timeout"] = str(float(start_timeout))
        url = f"{self.queue_url}/{app.full}"
        try:
            response = await self.transport.request(
                "POST", url, what=f"submit to {app.full}", idempotent=False, json=dict(payload),
                headers=headers, params={"fal_webhook": webhook_url} if webhook_url else None,
            )
        except TransportError as exc:
            if exc.maybe_delivered:
                raise SubmitUncertainError(app.full, exc.cause, url=url, fingerprint=fingerprint) from None
            raise
        except HTTPStatusError as exc:
            # 4xx: refused. 429/502/503 were retried and remain refusals. Any other 5xx came
            # after fal read the body (a gateway that gave up waiting, a 500): it may be queued.
            if exc.status_code < 500 or exc.status_code in SUBMIT_REFUSED:
                raise
            raise SubmitUncertainError(app.full, f"HTTP {exc.status_code}: {str(exc.detail)[:120]}", url=url,
                                       fingerprint=fingerprint, request_id=exc.request_id) from None
        except ResponseTooLarge as exc:
            # A 2xx answer too large to read: fal took the job all the same.
            raise SubmitUncertainError(app.full, str(exc), url=url, fingerprint=fingerprint) from None
        return self._accepted(app.full, url, response, fingerprint)

    def _accepted(self, app_id: str, url: str, response: httpx.Response, fingerprint: str | None) -> RequestHandle:
        """The handle a 2xx submit answer gives: its body, else its ``x-fal-request-id`` header.

        A 2xx means fal took the job: without a usable id (none, or one that is not an id and is
        never used) it is uncertain, never a plain failure that a re-run would pay for again.
        """
        try:
            data = json.loads(response.text)
        except ValueError:
            data = None
        problem = f"fal answered HTTP {response.status_code} without a request id"
        if isinstance(data, Mapping) and data.get("request_id") not in (None, ""):
            try:
                return RequestHandle.from_submit(self.queue_url, app_id, data)
            except ResponseError as exc:
                problem = str(exc)
        request_id = response.headers.get("x-fal-request-id", "").strip()
        if request_id and check_request_id(request_id) is None:
            log.info("fal: the submit answer has no usable request_id; using its x-fal-request-id header")
            return self.handle(app_id, request_id)
        raise SubmitUncertainError(app_id, problem, url=url, fingerprint=fingerprint)

    async def status(self, handle: RequestHandle, *, logs: bool = True) -> Status:
        response = await self.transport.request(
            "GET", handle.status_url, what=f"status of request {handle.request_id}",
            params={"logs": "1" if logs else "0"},
        )
        return Status.parse(_json(response, f"status of request {handle.request_id}"))

    async def stream_status(self, handle: RequestHandle, *, logs: bool = True) -> AsyncGenerator[Status, None]:
        """Statuses as fal pushes them over server-sent events; ends after COMPLETED.

        Before COMPLETED is passed on, the end of the body that follows it is read, so that the
        connection goes back to the pool for the result's request instead of being closed.
        """
        what = f"status stream of request {handle.request_id}"
        async with self.transport.stream(
            "GET", handle.status_url + "/stream", what=what, params={"logs": "1" if logs else "0"},
            timeout=httpx.Timeout(STREAM_READ_TIMEOUT, connect=10.0),
        ) as response:
            lines = iter_lines(response.aiter_bytes())
            try:
                async for data in iter_data(lines):
                    status = Status.parse(_loads(data, what))
                    if status.completed:
                        await _drain(lines)
                        yield status
                        return
                    yield status
            except httpx.TransportError as exc:
                raise TransportError(f"{what} dropped: {type(exc).__name__}", url=handle.status_url) from None

    async def result(self, handle: RequestHandle, *, retry: RetryPolicy | None = None) -> Any:
        what = f"result of request {handle.request_id}"
        try:
            response = await self.transport.request("GET", handle.response_url, what=what, retry=retry)
        except HTTPStatusError as exc:
            exc.request_id = exc.request_id or handle.request_id
            raise
        except ResponseTooLarge as exc:
            raise ResponseTooLarge(f"{exc} With sync_mode on, fal puts every picture inside this answer: "
                                "turn sync_mode off to get URLs instead.") from None
        return _json(response, what)

    async def cancel(self, handle: RequestHandle) -> bool:
        """Ask fal to cancel. True when fal accepted; False when the request had already ended."""
        try:
            await self.transport.request("PUT", handle.cancel_url, what=f"cancel of request {handle.request_id}",
                                         retry=CANCEL_RETRY)
        except HTTPStatusError as exc:
            if exc.status_code in (400, 404, 409):
                return False
            raise
        return True

    async def wait(
        self,
        handle: RequestHandle,
        *,
        on_update: OnUpdate | None = None,
        timeout: float | None = None,
        logs: bool = True,
        stream: bool = True,
        started: float | None = None,
    ) -> Status:
        """Follow a request until it completes; returns the final status.

        Raises AppError when the app failed and RequestTimeout after ``timeout`` seconds. To stop
        early, cancel the waiting task (the nodes do on ComfyUI's Cancel). After a timeout, and
        when the task is cancelled, the request is cancelled at fal first.
        """
        tracker = _Tracker(handle, on_update, time.monotonic() if started is None else started)
        follow = asyncio.ensure_future(self._follow(handle, tracker, logs=logs, stream=stream))
        try:
            done, _ = await asyncio.wait([follow], timeout=timeout)
        except asyncio.CancelledError:
            await _stop(follow)
            await asyncio.shield(self._cancel_quietly(handle))
            raise
        if follow in done:
            status = follow.result()
            if status.error:
                raise await self._failure(handle, status)
            return status
        await _stop(follow)
        accepted = await self._cancel_quietly(handle)
        if accepted is False:
            # The cancel came too late: the request completed, and is paid. Nobody asked to
            # stop, so its result is not thrown away.
            late = await self.completed_status(handle)
            if late is not None:
                return late
        raise RequestTimeout(
            f"Request {handle.request_id} did not finish within {timeout:g} s, so it was cancelled at fal. "
            "Raise the timeout if fal's queue is long.", request_id=handle.request_id)

    async def subscribe(
        self,
        app_id: str,
        payload: Mapping[str, Any],
        *,
        on_update: OnUpdate | None = None,
        on_submitted: Callable[[RequestHandle], None] | None = None,
        timeout: float | None = None,
        logs: bool = True,
        stream: bool = True,
        **submit_options: Any,
    ) -> Completion:
        """Submit, wait and fetch the result: the whole cycle in one call."""
        started = time.monotonic()
        submit = asyncio.ensure_future(self.submit(app_id, payload, **submit_options))
        try:
            handle = await asyncio.shield(submit)
        except asyncio.CancelledError:
            # A submit already on the wire may still be accepted (and paid): let it finish so
            # the request can be cancelled at fal instead of running on unseen.
            try:
                await self._cancel_quietly(await submit)
            except FalError:
                pass
            raise
        if on_submitted is not None:
            on_submitted(handle)
        return await self.complete(handle, on_update=on_update, logs=logs,
                                   stream=stream, started=started,
                                   timeout=None if timeout is None
                                   else max(timeout - (time.monotonic() - started), 0.001))

    async def complete(self, handle: RequestHandle, **wait_options: Any) -> Completion:
        """Wait for a request already submitted (maybe by another process) and fetch its result.

        A result that fails for good after COMPLETED (an error status that retries did not
        cure, or a 504 for the caller's own timeout) raises ResultError; 404 (fal no longer
        keeps it) stays an HTTPStatusError, and a refused key an AuthError.
        """
        status = await self.wait(handle, **wait_options)
        return Completion(handle, status, await self.final_result(handle))

    async def final_result(self, handle: RequestHandle) -> Any:
        """The result of a request fal reported COMPLETED; the errors as in :meth:`complete`."""
        try:
            return await self.result(handle)
        except (AuthError, ValidationError):
            raise
        except HTTPStatusError as exc:
            if exc.status_code == 404:
                raise
            raise ResultError(f"fal completed request {handle.request_id}, but its result could not be fetched: "
                              f"{exc}", request_id=handle.request_id) from None

    async def _follow(self, handle: RequestHandle, tracker: _Tracker, *, logs: bool, stream: bool) -> Status:
        failures = 0
        while stream and failures < STREAM_RECONNECTS:
            try:
                # Closed on the way out, so the stream's connection is free before the result.
                async with aclosing(self.stream_status(handle, logs=logs)) as statuses:
                    async for status in statuses:
                        failures = 0
                        tracker.feed(status)
                        if status.completed:
                            return status
                failures += 1  # the stream ended without COMPLETED
            except HTTPStatusError as exc:
                if exc.status_code in (401, 403):
                    raise
                if exc.status_code < 500:
                    log.info("fal: status stream refused (HTTP %d); polling instead", exc.status_code)
                    break
                failures += 1
            except TransportError as exc:
                log.info("fal: %s", exc)
                failures += 1
            except ResponseTooLarge as exc:
                # The request may still give its (paid) result: ask for it the plain way.
                log.warning("fal: %s Polling instead.", exc)
                break
            # One poll catches a completion the stream missed before reconnecting.
            status = await self.status(handle, logs=logs)
            tracker.feed(status)
            if status.completed:
                return status
        interval = self.poll_interval
        while True:
            status = await self.status(handle, logs=logs)
            tracker.feed(status)
            if status.completed:
                return status
            await asyncio.sleep(interval)
            interval = min(interval * 1.5, self.max_poll_interval)

    async def _failure(self, handle: RequestHandle, status: Status) -> Exception:
        """The error for a request that completed with an error, as detailed as fal allows."""
        try:
            # One look for fal's detailed error: the request has failed, retrying cannot help.
            await self.result(handle, retry=NO_RETRY)
        except ValidationError as exc:
            return exc
        except (HTTPStatusError, TransportError, ResponseError):
            pass
        kind = f" ({status.error_type})" if status.error_type else ""
        return AppError(f"fal's app failed on request {handle.request_id}{kind}: {status.error}",
                        request_id=handle.request_id, error=status.error or "", error_type=status.error_type)

    async def _cancel_quietly(self, handle: RequestHandle) -> bool | None:
        """Cancel at fal: True when accepted, False when it had already ended, None on failure."""
        try:
            return await self.cancel(handle)
        except Exception as exc:  # the caller is already failing; report why cancel did not land
            log.warning("fal: could not cancel request %s: %s", handle.request_id, exc)
            return None

    async def completed_status(self, handle: RequestHandle) -> Status | None:
        """The status of a request that completed without error, or None (running, failed, unknown)."""
        try:
            status = await self.status(handle, logs=False)
        except FalError as exc:
            log.warning("fal: could not read the status of request %s: %s", handle.request_id, exc)
            return None
        return status if status.completed and not status.error else None


async def _drain(lines: AsyncIterator[str]) -> None:
    """Read a stream to its end if it ends within STREAM_DRAIN seconds."""
    async def rest() -> None:
        async for _ in lines:
            pass
    try:
        await asyncio.wait_for(rest(), STREAM_DRAIN)
    except (asyncio.TimeoutError, httpx.TransportError, ResponseTooLarge):
        pass  # the connection is closed with the stream instead of being reused


async def _stop(*tasks: asyncio.Future | None) -> None:
    """Cancel helper tasks and let them finish; their outcome no longer matters."""
    running = [t for t in tasks if t is not None]
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)


def _json(response: httpx.Response, what: str) -> Any:
    return _loads(response.text, what)


def _loads(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise ResponseError(f"fal's answer to the {what} is not JSON: {excerpt(text)}") from None
