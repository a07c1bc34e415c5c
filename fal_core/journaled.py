"""One paid request with its whole life in the journal: at most one accepted submit per job,
and a paid result never lost.

The rules, in the order a run meets them:

1. The journal is read first; the same job (same fingerprint) reuses a completed result,
   reattaches to a request still pending, checks whether a cancelled one finished anyway, and
   resolves a submit whose answer was lost (below) before anything new is sent.
2. Before any network call a ``preparing`` record proves the journal writable, and right
   before the submit a ``sending`` record is flushed to disk: if either cannot be written, the
   run fails with JournalError and nothing is sent.
3. A submit that may have reached fal without its answer reaching us (a drop or timeout after
   sending, a 504/524/500, a 2xx without any request id) is *uncertain*: never re-sent. The
   run looks for it in fal's request history (a request of this endpoint sent in the window
   around ours whose input matches ours field for field; fal lists a request once it ended):
   found once, it is adopted and followed as if the answer had come; found twice, neither is
   taken; not found within the horizon (the job's timeout, at least MIN_HORIZON), it was not
   accepted and only then may be sent again. A key that may not read the history (401/403)
   leaves it uncertain, with the reason.
4. A timeout or Cancel cancels at fal; when the request had completed anyway, its result is
   fetched and journaled (a timeout returns it; a Cancel still stops, and a re-run reuses it).
5. A result that fails for good after COMPLETED ends the entry as failed; a result fal no
   longer keeps is taken from the history's output, else the entry is ``gone`` and a re-run
   refuses to pay again unless forced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Mapping

from .client import FalClient
from .deadline import LATE_GRACE, Deadline
from .errors import (
    AppError, AuthError, FalError, HTTPStatusError, JournalError, JobError, RequestTimeout,
    ResultError, ResultGoneError, SubmitUncertainError, ValidationError,
)
from .history import HistoryItem
from .journal import (
    CANCELLED, COMPLETED, GONE, PENDING, UNCERTAIN, UNKNOWN, Entry, Journal, describe,
)
from .phase import Phase
from .queue import Completion, OnUpdate, Update
from .status import COMPLETED as COMPLETED_STATE
from .status import RequestHandle, Status

log = logging.getLogger("fal_core")

# How long after sending fal's history must list a request it accepted: the job's timeout, at
# least this; without a timeout, NO_TIMEOUT_HORIZON.
MIN_HORIZON = 300.0
NO_TIMEOUT_HORIZON = 1800.0
# Our clock and fal's may differ: a match may have been sent this much before or after ours.
WINDOW_SLACK = 120.0
# A submit recorded as sending with no outcome (a crash) ended at the latest this long after.
SUBMIT_SPAN = 180.0
HISTORY_POLL, HISTORY_POLL_MAX = 0.5, 10.0
FORCE_HINT = "turn on force_new_request (--force-new on the command line)"


def horizon_for(timeout: float | None) -> float:
    return max(timeout or NO_TIMEOUT_HORIZON, MIN_HORIZON)


def _clock(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


class JournaledRequest:
    """One job's request: ``run`` returns its Completion, paying at most once for it."""

    def __init__(self, client: FalClient, journal: Journal | None, fp: str, app_id: str, *,
                 deadline: Deadline, on_update: OnUpdate | None = None,
                 cost: Mapping[str, Any] | None = None) -> None:
        self.client = client
        self.journal = journal
        self.fp = fp
        self.app_id = app_id
        self.deadline = deadline
        self.on_update = on_update
        self.cost = cost
        self.history = client.history

    # --- the run -------------------------------------------------------------------------------

    async def run(self, fields: Mapping[str, Any], make_payload: Callable[[], Awaitable[dict]], *,
                  force_new: bool = False) -> Completion:
        """``fields``: what is known before any network call; ``make_payload`` places the
        picture (maybe an upload) and returns the whole payload to submit."""
        if self.journal is not None and not force_new:
            entry = self.journal.lookup(self.fp)
            if entry is not None:
                completion = await self._from_entry(entry)
                if completion is not None:
                    return completion
        return await self._new(fields, make_payload)

    async def _from_entry(self, entry: Entry) -> Completion | None:
        """What an earlier run of the same job left: a Completion, or None to send anew."""
        handle = entry.handle
        if entry.state == COMPLETED and handle is not None:
            self._notify(entry.request_id, Phase.COMPLETED)
            return Completion(handle, Status(COMPLETED_STATE), entry.result)
        if entry.state == GONE:
            raise ResultGoneError(f"{entry.error or 'fal no longer keeps this result'} To pay for a new request, "
                                  f"{FORCE_HINT}.", request_id=entry.request_id)
        if entry.state == PENDING and handle is not None:
            return await self._follow(handle)
        if entry.state == CANCELLED and handle is not None:
            # fal only signals a running app to stop: it may have finished (and billed) anyway.
            return await self._late_completion(handle) or await self._from_history(handle, None)
        if entry.state in UNCERTAIN:
            if not entry.fields:
                raise self._uncertain(entry, None, SubmitUncertainError.DEFAULT_ADVICE)
            return await self._resolve(entry)
        return None

    async def _new(self, fields: Mapping[str, Any], make_payload: Callable[[], Awaitable[dict]]) -> Completion:
        if self.journal is not None:
            self.journal.preparing(self.fp, self.app_id, fields)
        sent_at = time.time()
        try:
            payload = await make_payload()
            if self.journal is not None:
                sent_at = self.journal.sending(self.fp, self.app_id, payload)
        except BaseException as exc:
            self._note("failed", None, f"not sent: {_reason(exc)}")
            raise
        self._notify(None, Phase.SUBMITTING)
        submit = asyncio.ensure_future(self.client.queue.submit(self.app_id, payload, fingerprint=self.fp))
        try:
            handle = await asyncio.shield(submit)
        except asyncio.CancelledError:
            # The submit is on the wire and may be accepted (and paid): let it finish, record
            # it and cancel it at fal instead of letting it run on unseen.
            await asyncio.shield(self._abandon(submit, payload, sent_at))
            raise
        except SubmitUncertainError as exc:
            horizon = horizon_for(self.deadline.timeout)
            self._note("unknown", self.app_id, payload, str(exc), horizon)
            entry = Entry(self.fp, UNKNOWN, time.time(), app_id=self.app_id, fields=describe(payload),
                          error=str(exc), sent_at=sent_at, horizon=horizon)
            completion = await self._resolve(entry, cause=exc)
            if completion is None:
                return await self._new(fields, make_payload)
            return completion
        except BaseException as exc:
            self._note("failed", None, f"not accepted by fal: {_reason(exc)}")
            raise
        self._note("submitted", handle, payload, self.cost)
        return await self._follow(handle)

    async def _abandon(self, submit: asyncio.Future, payload: Mapping[str, Any], sent_at: float) -> None:
        try:
            handle = await submit
        except SubmitUncertainError as exc:
            self._note("unknown", self.app_id, payload, str(exc), horizon_for(self.deadline.timeout))
            return
        except BaseException as exc:
            self._note("failed", None, f"not accepted by fal: {_reason(exc)}")
            return
        self._note("submitted", handle, payload, self.cost)
        try:
            await self.client.queue.cancel(handle)
        except FalError as exc:
            log.warning("fal: could not cancel request %s: %s", handle.request_id, exc)
        if await self._late_completion(handle) is None:
            self._note("cancelled", handle.request_id)

    # --- following an accepted request ----------------------------------------------------------

    async def _follow(self, handle: RequestHandle, known: HistoryItem | None = None) -> Completion:
        """Wait for ``handle`` and fetch its result, every ending written to the journal."""
        try:
            status = await self.client.queue.wait(
                handle, on_update=self.on_update, timeout=self.deadline.left(), started=self.deadline.started)
            # Completed, so paid: past the deadline now (a cancel that came too late) it still
            # gets LATE_GRACE; a timeout here leaves it pending, for a re-run to fetch.
            output = await self.deadline.or_grace(LATE_GRACE).bound(
                self.client.queue.final_result(handle), f"fetch of the result of request {handle.request_id}",
                "It completed at fal and stays in the journal: a re-run fetches it without paying. ")
            completion = Completion(handle, status, output)
        except RequestTimeout as exc:
            if exc.request_id is None:
                # The result's fetch ran out of time, not the wait: fal's history may hold the
                # output (a result that keeps failing); else it stays pending for a re-run.
                recovered = await Deadline(LATE_GRACE).bound(self._from_history(handle, known), "history lookup")
                if recovered is not None:
                    return recovered
                raise
            late = await asyncio.shield(self._late_completion(handle))
            if late is not None:
                return late
            self._note("cancelled", handle.request_id)
            raise
        except asyncio.CancelledError:
            if await asyncio.shield(self._late_completion(handle)) is None:
                self._note("cancelled", handle.request_id)
            raise
        except (AppError, ValidationError) as exc:
            self._note("failed", handle.request_id, str(exc))
            raise
        except ResultError as exc:
            # COMPLETED, and the result refused for good: fal's history may still hold the output.
            recovered = await self._from_history(handle, known)
            if recovered is not None:
                return recovered
            self._note("failed", handle.request_id, str(exc))
            raise
        except HTTPStatusError as exc:
            if exc.status_code != 404:
                raise
            return await self._gone(handle, known)
        self._note("completed", handle.request_id, completion.output)
        return completion

    async def _from_history(self, handle: RequestHandle, known: HistoryItem | None) -> Completion | None:
        """The output fal's history keeps for a request that succeeded, journaled; else None."""
        item = known
        if item is None or item.json_output is None:
            try:
                item = await self.history.get(self.app_id, handle.request_id, since=time.time() - 90 * 86400)
            except FalError as exc:
                log.warning("fal: the request history could not be read for %s: %s", handle.request_id, exc)
                return None
        if item is None or not item.succeeded or item.json_output is None:
            return None
        log.info("fal: the output of request %s comes from fal's request history", handle.request_id)
        self._note("completed", handle.request_id, item.json_output)
        self._notify(handle.request_id, Phase.COMPLETED)
        return Completion(handle, Status(COMPLETED_STATE), item.json_output)

    async def _late_completion(self, handle: RequestHandle) -> Completion | None:
        """The result of a request stopped too late (it completed anyway), journaled; else None."""
        status = await self.client.queue.completed_status(handle)
        if status is None:
            return None
        try:
            output = await self.client.queue.result(handle)
        except FalError as exc:
            log.warning("fal: request %s completed but its result could not be fetched: %s", handle.request_id, exc)
            return None
        log.info("fal: request %s had completed before the cancel; its result is kept", handle.request_id)
        self._note("completed", handle.request_id, output)
        self._notify(handle.request_id, Phase.COMPLETED)
        return Completion(handle, status, output)

    async def _gone(self, handle: RequestHandle, known: HistoryItem | None) -> Completion:
        """fal's queue no longer knows the request: its output from the history, or a clear error."""
        item, reason = known, ""
        if item is None or item.json_output is None:
            try:
                item = await self.history.get(self.app_id, handle.request_id, since=time.time() - 90 * 86400)
            except FalError as exc:
                reason = f" (fal's request history could not be read: {_reason(exc)})"
        recovered = await self._from_history(handle, item) if item is not None else None
        if recovered is not None:
            return recovered
        if item is not None and item.status_code is not None and not item.succeeded:
            message = (f"fal ran request {handle.request_id} and it failed (HTTP {item.status_code} in fal's "
                       "request history); failed requests are not billed, so a re-run sends a new one.")
            self._note("failed", handle.request_id, message)
            raise JobError(message, request_id=handle.request_id)
        message = (f"fal no longer keeps the result of request {handle.request_id} (it keeps results 1 h after "
                   "completion, 6 min when they are 10 KB or larger, as with sync_mode), and its request history "
                   f"holds no output for it{reason}. If it completed, it was paid: nothing was sent again.")
        self._note("gone", handle.request_id, message)
        raise ResultGoneError(f"{message} To pay for a new request, {FORCE_HINT}.", request_id=handle.request_id)

    # --- resolving an uncertain submit --------------------------------------------------------

    async def resolve(self, entry: Entry) -> Completion | None:
        """One look in fal's history for an uncertain entry (``journal --resolve``): its
        Completion once adopted, None when it was surely not accepted, else SubmitUncertainError."""
        return await self._resolve(entry, once=True)

    async def _resolve(self, entry: Entry, cause: SubmitUncertainError | None = None, *,
                       once: bool = False) -> Completion | None:
        """Find an uncertain submit in fal's history: its Completion once adopted, None when it
        was surely not accepted (it may be sent again), else SubmitUncertainError. Looks again
        and again (fal lists a request once it has ended) until the deadline, unless ``once``."""
        self._notify(None, Phase.CHECKING_HISTORY)
        sent_at = entry.sent_at or entry.time
        horizon = entry.horizon or horizon_for(self.deadline.timeout)
        sent_until = (entry.time if entry.state == UNKNOWN else sent_at + SUBMIT_SPAN) + WINDOW_SLACK
        known = self.journal.request_ids() if self.journal is not None else set()
        interval, trouble = HISTORY_POLL, ""
        while True:
            try:
                found = await self.history.find(self.app_id, entry.fields or {}, sent_from=sent_at - WINDOW_SLACK,
                                                sent_until=sent_until, exclude=known)
            except AuthError as exc:
                raise self._uncertain(entry, cause, (
                    f"fal's request history, which would tell, refused this key (HTTP {exc.status_code}: a key "
                    "without access to fal's Platform API). Nothing was sent again: check "
                    f"https://fal.ai/dashboard/requests, then {FORCE_HINT} if it is not there.")) from None
            except FalError as exc:
                found, trouble = None, f" (fal's request history could not be read: {_reason(exc)})"
            if found is not None and len(found) == 1:
                return await self._adopt(found[0])
            if found is not None and len(found) > 1:
                ids = ", ".join(item.request_id for item in found)
                raise self._uncertain(entry, cause, (
                    f"fal's request history holds {len(found)} requests with this very input sent then ({ids}): "
                    "neither was taken, so nothing is paid twice. Check them at https://fal.ai/dashboard/requests; "
                    f"{FORCE_HINT} to send a new one."))
            now = time.time()
            if found is not None and now >= sent_at + horizon:
                self._note("failed", None, f"not accepted: fal's request history did not list it {horizon / 60:g} "
                                           "min after it was sent")
                log.info("fal: the uncertain submit of %s was not accepted; it may be sent again", self.fp)
                return None
            wait = min(interval, max(sent_at + horizon - now, 0.0))
            left = self.deadline.left()
            if once or (left is not None and left <= wait):
                raise self._uncertain(entry, cause, (
                    f"fal's request history does not list it yet (fal lists a request once it has ended){trouble}. "
                    f"Nothing was sent again. A run after {_clock(sent_at + horizon)} looks again and, if fal still "
                    "does not list it then, sends it anew."))
            await asyncio.sleep(wait)
            interval = min(interval * 1.5, HISTORY_POLL_MAX)

    async def _adopt(self, item: HistoryItem) -> Completion:
        handle = self.client.queue.handle(self.app_id, item.request_id)
        log.info("fal: the lost submit is request %s in fal's request history", item.request_id)
        self._note("submitted", handle, None, self.cost)  # ours, found: paid once, counted once
        if not item.succeeded:
            message = (f"The lost submit is request {item.request_id} in fal's request history; it failed at fal "
                       f"(HTTP {item.status_code}). Failed requests are not billed, so a re-run sends a new one.")
            self._note("failed", item.request_id, message)
            raise JobError(message, request_id=item.request_id)
        return await self._follow(handle, known=item)

    def _uncertain(self, entry: Entry, cause: SubmitUncertainError | None, advice: str) -> SubmitUncertainError:
        what = cause.cause if cause is not None else (
            f"recorded at {_clock(entry.sent_at or entry.time)}, " + (entry.error or "no answer recorded")[:160])
        return SubmitUncertainError(self.app_id, what, url=self.client.config.queue_url, fingerprint=self.fp,
                                    advice=advice)

    # --- bookkeeping ------------------------------------------------------------------------------

    def _notify(self, request_id: str | None, phase: Phase) -> None:
        if self.on_update is not None:
            self.on_update(Update(request_id, phase, elapsed=self.deadline.elapsed()))

    def _note(self, what: str, *args: Any) -> None:
        """Write a record once fal may hold the request: a disk failure now must not lose a
        paid result, so it is logged, and the record before it (``sending``) still tells."""
        if self.journal is None:
            return
        try:
            getattr(self.journal, what)(self.fp, *args)
        except JournalError as exc:
            log.warning("fal: %s", exc)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "stopped"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]
