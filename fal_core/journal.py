"""The request journal: every paid request is written down before it is sent, so a crash, a
lost answer, a restart or a timeout never loses a result and a re-run never pays twice.

One JSON object per line, appended (never rewritten in place) under an exclusive lock, so two
processes can share a journal; the records of a submit (``sending``, ``pending``) are flushed to
disk (fsync) before the call they announce goes on, so a power cut cannot lose them. A request
is identified by the fingerprint of the exact job (app, every field, seed included, and the input
picture's content).

Records (``time`` is the wall clock in seconds; later records of a fingerprint add to and
override earlier ones, and the latest ``state`` is the entry's state):

==============  =====================================================================  ==========================
state           meaning; what a re-run of the same job does                            facts it adds
==============  =====================================================================  ==========================
``preparing``   nothing sent yet (proves the journal is writable before any network    ``app_id``, ``fields``
                call); a re-run starts afresh
``sending``     the submit is about to go out; if nothing follows, fal may have it:    ``app_id``, ``fields``,
                a re-run resolves it through fal's request history                     ``sent_at``
``unknown``     the submit's answer was lost (or unreadable): resolved the same way    ``error``, ``horizon``
``pending``     fal accepted it: a re-run reattaches instead of paying again           ``request_id``, ``urls``,
                                                                                       ``cost`` (optional:
                                                                                       amount, currency,
                                                                                       source)
``completed``   its result is kept: a re-run reuses it without any request             ``request_id``, ``result``
``gone``        fal completed (and billed) it but no longer keeps the result: a        ``request_id``, ``error``
                re-run refuses to pay again unless forced
``failed``      never accepted, or it failed at fal: a re-run sends a new request      ``error``
``cancelled``   cancelled at fal: a re-run first checks whether it finished anyway     ``request_id``
==============  =====================================================================  ==========================

``fields`` are the fields sent (``image_url`` included), data URIs replaced by
``data:<sha256 …>`` digests; ``urls`` holds fal's ``status_url``, ``response_url`` and
``cancel_url``; ``result`` is fal's output JSON, inline (data URI) files moved to the
results folder beside the journal and replaced by ``fal-result-file:<sha256>`` references;
``horizon`` is how long after ``sent_at`` fal's history must list an accepted request.

The key is never written: every record passes through ``redaction`` on its way to the disk, so
a key that fal's answer echoed is not written either. Lines that cannot be read (a crash
mid-write, a hand edit, a value of the wrong type) are skipped with a warning; a record glued
onto a torn line is recovered.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from .errors import JournalError
from .private_files import private_folder, write_private
from .redaction import redact_value
from .status import RequestHandle

if sys.platform == "win32":  # appends of one line stay whole there too, without the lock
    fcntl = None
else:
    import fcntl

log = logging.getLogger("fal_core")

RETENTION = 24 * 3600.0
# How long what a request cost is kept, for the spend totals (30 days).
SPEND_WINDOW = 30 * 24 * 3600.0
JOURNAL_NAME = "journal.jsonl"
DEFAULT_PATH = Path.home() / ".local" / "state" / "comfyui-fal-sd3" / JOURNAL_NAME
PREPARING, SENDING, UNKNOWN, PENDING = "preparing", "sending", "unknown", "pending"
COMPLETED, GONE, FAILED, CANCELLED = "completed", "gone", "failed", "cancelled"
STATES = (PREPARING, SENDING, UNKNOWN, PENDING, COMPLETED, GONE, FAILED, CANCELLED)
# A submit may have reached fal, and no request id is known: resolved through fal's history.
UNCERTAIN = (SENDING, UNKNOWN)
INLINE_FILE = "fal-result-file:"
_URL_KEYS = ("status_url", "response_url", "cancel_url")
_NUMBER = (int, float)
# The type each fact must have; a record with another is skipped (never a crash of every run).
_TYPES: dict[str, Any] = {
    "fingerprint": str, "state": str, "time": _NUMBER, "app_id": str, "request_id": str, "urls": dict,
    "fields": dict, "error": str, "sent_at": _NUMBER, "horizon": _NUMBER, "cost": dict,
}
_REQUIRED = ("fingerprint", "state", "time")


def digest(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def fingerprint(app_id: str, fields: Mapping[str, Any], image: bytes | str | None) -> str:
    """The identity of one job: the app, every field and the picture (its bytes, or its URL)."""
    picture = None if image is None else ("url:" + image if isinstance(image, str) else "sha256:" + digest(image))
    canonical = json.dumps({"app": app_id, "fields": dict(fields), "image": picture},
                           sort_keys=True, separators=(",", ":"), default=str)
    return digest(canonical)[:32]


def describe(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The fields as the journal keeps them: inline pictures become digests, not megabytes."""
    return {k: (f"data:<sha256 {digest(v)[:16]}>" if isinstance(v, str) and v.startswith("data:")
                and not v.startswith("data:<sha256 ") else v)
            for k, v in fields.items()}


def _line(record: Mapping[str, Any]) -> bytes:
    """A record as the journal stores it. The one write boundary: whatever fal's answers echoed,
    no key reaches the disk."""
    return (json.dumps(redact_value(dict(record)), separators=(",", ":")) + "\n").encode()


def valid_record(record: Any) -> bool:
    """Whether a parsed line is a record this journal can use: every fact of the right type."""
    if not isinstance(record, dict) or any(k not in record for k in _REQUIRED):
        return False
    for key, kind in _TYPES.items():
        value = record.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            return False
    if record["state"] not in STATES:
        return False
    urls = record.get("urls")
    return urls is None or all(isinstance(urls.get(k), str) for k in _URL_KEYS)


@dataclass(frozen=True)
class Entry:
    """What the journal knows of one fingerprint: its latest state and the facts gathered."""

    fingerprint: str
    state: str
    time: float
    app_id: str | None = None
    request_id: str | None = None
    urls: dict | None = None
    fields: dict | None = None
    result: Any = None
    error: str | None = None
    sent_at: float | None = None
    horizon: float | None = None

    @property
    def handle(self) -> RequestHandle | None:
        if not self.request_id or not self.urls or not self.app_id:
            return None
        return RequestHandle(self.app_id, self.request_id, self.urls["status_url"], self.urls["response_url"],
                             self.urls["cancel_url"])


def default_path(state_folder: Path | None = None) -> Path:
    """``FAL_JOURNAL`` if set, else ``journal.jsonl`` in ``state_folder`` (the nodes': ComfyUI's
    user folder), else in the user's state folder (the command line's)."""
    fallback = DEFAULT_PATH if state_folder is None else state_folder / JOURNAL_NAME
    return Path(os.environ.get("FAL_JOURNAL") or fallback)


class Journal:
    def __init__(self, path: Path | str, *, retention: float = RETENTION) -> None:
        self.path = Path(path)
        self.retention = retention

    @property
    def results(self) -> "ResultFiles":
        """Where inline result files and downloaded results are kept: ``results/`` beside it."""
        return ResultFiles(self.path.parent / "results", retention=self.retention)

    # --- writing ---------------------------------------------------------------------------
    # Every writer raises JournalError (naming the file and the cause) when the disk refuses.

    def preparing(self, fp: str, app_id: str, fields: Mapping[str, Any]) -> None:
        self._append(fp, PREPARING, app_id=app_id, fields=describe(fields))

    def sending(self, fp: str, app_id: str, fields: Mapping[str, Any]) -> float:
        """Record that the submit is about to go out; returns the ``sent_at`` it wrote."""
        sent_at = time.time()
        self._append(fp, SENDING, app_id=app_id, fields=describe(fields), sent_at=sent_at)
        return sent_at

    def submitted(self, fp: str, handle: RequestHandle, fields: Mapping[str, Any] | None = None,
                  cost: Mapping[str, Any] | None = None) -> None:
        """fal accepted the request (and will charge for it): ``cost`` is its price,
        ``{"amount", "currency", "source"}``, which ``fal_core.spend`` adds up."""
        self._append(fp, PENDING, app_id=handle.app_id, request_id=handle.request_id,
                     urls={k: v for k, v in handle.to_json().items() if k.endswith("_url")},
                     fields=describe(fields) if fields else None, cost=dict(cost) if cost is not None else None)

    def completed(self, fp: str, request_id: str, result: Any) -> None:
        self._append(fp, COMPLETED, request_id=request_id, result=self.keep_inline(result))

    def unknown(self, fp: str, app_id: str, fields: Mapping[str, Any], error: str,
                horizon: float | None = None) -> None:
        self._append(fp, UNKNOWN, app_id=app_id, fields=describe(fields), error=error, horizon=horizon)

    def gone(self, fp: str, request_id: str, error: str) -> None:
        self._append(fp, GONE, request_id=request_id, error=error)

    def failed(self, fp: str, request_id: str | None, error: str) -> None:
        self._append(fp, FAILED, request_id=request_id, error=error)

    def cancelled(self, fp: str, request_id: str | None) -> None:
        self._append(fp, CANCELLED, request_id=request_id)

    def keep_inline(self, result: Any) -> Any:
        """``result`` with every data URI moved to the results folder and replaced by a reference."""
        if isinstance(result, str) and result.startswith("data:"):
            return self.results.put_inline(result)
        if isinstance(result, dict):
            return {k: self.keep_inline(v) for k, v in result.items()}
        if isinstance(result, list):
            return [self.keep_inline(v) for v in result]
        return result

    def _append(self, fp: str, state: str, **facts: Any) -> None:
        """Append one record; those that announce a submit (``sending``) or hold fal's request id
        (``pending``) are flushed to disk before this returns: a power cut must not lose them."""
        record = {"fingerprint": fp, "state": state, "time": time.time(),
                  **{k: v for k, v in facts.items() if v is not None}}
        line = _line(record)
        try:
            private_folder(self.path.parent)
            with self._locked():
                # Opened per record, so a compaction (which replaces the file) never strands a
                # writer on the old file.
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    size = os.fstat(fd).st_size
                    if size and hasattr(os, "pread") and os.pread(fd, 1, size - 1) != b"\n":
                        line = b"\n" + line  # a torn last line (a crash mid-write) stays alone
                    view = memoryview(line)
                    while view:
                        view = view[os.write(fd, view):]
                    if state in (SENDING, PENDING):
                        os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            raise JournalError(self.path, "written", exc.strerror or str(exc),
                               f"The {state!r} record of a request could not be kept.") from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if fcntl is None:
            yield
            return
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # --- reading ---------------------------------------------------------------------------

    def _records(self) -> list[dict]:
        try:
            if not stat.S_ISREG(self.path.stat().st_mode):
                # /dev/null would silently forget every paid request; /dev/zero never ends.
                raise OSError(errno.EINVAL, "it is not a regular file")
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        records, bad = [], 0
        for line in lines:
            record = _parse(line)
            if record is None and b'{"fingerprint"' in line[1:]:
                # A record appended right after a torn line (before that was prevented): the
                # torn part is lost, the whole record after it is not.
                record = _parse(line[line.rfind(b'{"fingerprint"'):])
                bad += 1
            elif record is None:
                bad += line.strip() != b""
            if record is not None:
                records.append(record)
        if bad:
            log.warning("fal journal %s: skipped %d unreadable line(s)", self.path, bad)
        return records

    def entries(self) -> list[Entry]:
        """Every fingerprint's latest state within the retention window, newest first.

        Raises JournalError when the file exists but cannot be read: without it, nobody can
        tell whether a job was already paid.
        """
        try:
            with self._locked():  # so a line being appended is never read half-written
                records = self._records()
        except FileNotFoundError:
            records = []  # not even its folder yet
        except OSError as exc:
            raise JournalError(self.path, "read", exc.strerror or str(exc),
                               "Nothing was sent to fal, so nothing was paid.") from None
        merged: dict[str, dict] = {}
        for record in records:
            merged.setdefault(record["fingerprint"], {}).update(record)
        horizon = time.time() - self.retention
        entries = [Entry(fingerprint=m["fingerprint"], state=m["state"], time=m["time"], app_id=m.get("app_id"),
                         request_id=m.get("request_id"), urls=m.get("urls"), fields=m.get("fields"),
                         result=m.get("result"), error=m.get("error"), sent_at=m.get("sent_at"),
                         horizon=m.get("horizon"))
                   for m in merged.values() if m["time"] >= horizon]
        return sorted(entries, key=lambda e: e.time, reverse=True)

    def records(self) -> list[dict]:
        """Every readable record, oldest first, including those past the retention window."""
        try:
            with self._locked():
                return self._records()
        except FileNotFoundError:
            return []

    def lookup(self, fp: str) -> Entry | None:
        return next((e for e in self.entries() if e.fingerprint == fp), None)

    def find_request(self, request_id: str) -> Entry | None:
        return next((e for e in self.entries() if e.request_id == request_id), None)

    def request_ids(self) -> set[str]:
        """Every request id any record names: requests already known to belong to some job."""
        try:
            with self._locked():
                return {r["request_id"] for r in self._records() if r.get("request_id")}
        except FileNotFoundError:
            return set()

    def prune(self) -> int:
        """Drop the records of entries past the retention window; returns how many lines went.

        What a request cost stays for ``SPEND_WINDOW`` (the spend totals), as a record reduced to
        its id, time and cost, which ``entries`` ignores as it is past the retention window.
        """
        if not self.path.exists():
            return 0
        with self._locked():
            records = self._records()
            latest: dict[str, float] = {}
            for record in records:
                latest[record["fingerprint"]] = max(latest.get(record["fingerprint"], 0.0), record["time"])
            now = time.time()
            horizon, spend_horizon = now - self.retention, now - SPEND_WINDOW
            kept = []
            for r in records:
                if latest[r["fingerprint"]] >= horizon:
                    kept.append(r)
                elif "cost" in r and r.get("time", 0.0) >= spend_horizon:
                    kept.append({k: r[k] for k in ("fingerprint", "state", "time", "app_id", "request_id", "cost")
                                 if k in r})
            if kept == records:
                return 0
            tmp = self.path.with_name(self.path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.writelines(_line(r) for r in kept)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            return len(records) - len(kept)


def _parse(line: bytes) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if valid_record(record) else None


class ResultFiles:
    """Result files kept beside the journal, by URL: downloads (so a reused result costs no
    download either) and inline data URIs of results (so the journal holds no megabytes).
    Files past the retention window are removed by ``prune``."""

    def __init__(self, folder: Path | str, *, retention: float = RETENTION) -> None:
        self.folder = Path(folder)
        self.retention = retention

    def _path(self, url: str) -> Path:
        return self.folder / digest(url)

    def get(self, url: str) -> bytes | None:
        path = self._path(url)
        try:
            if time.time() - path.stat().st_mtime > self.retention:
                return None
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def put(self, url: str, data: bytes) -> None:
        write_private(self._path(url), data)

    def put_inline(self, data_uri: str) -> str:
        """Keep a data URI as a file; returns the ``fal-result-file:`` reference that reads it back."""
        reference = INLINE_FILE + digest(data_uri)
        try:
            self.put(reference, data_uri.encode())
        except OSError as exc:
            raise JournalError(self.folder, "written", exc.strerror or str(exc),
                               "An inline result file could not be kept.") from None
        return reference

    def prune(self) -> int:
        removed = 0
        horizon = time.time() - self.retention
        for path in self.folder.glob("*"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < horizon:
                    path.unlink()
                    removed += 1
        return removed
