"""The request journal: every paid request is written down before we wait for it, so a crash,
a restart or a timeout never loses a result and a re-run never pays twice.

One JSON object per line, appended (never rewritten in place) under an exclusive lock, so two
processes can share a journal. A request is identified by the fingerprint of the exact job (app,
every field, seed included, and the input picture's content). Its latest record tells its state:

- ``pending``: submitted, outcome unknown to us: a re-run reattaches to it instead of paying again;
- ``completed``: its result is in the journal: a re-run within the retention window reuses it;
- ``unknown``: the submit's answer was lost, fal may have it: a re-run is refused until the user
  checks (or forces a new request);
- ``failed`` / ``cancelled``: never reused.

The key is never written: records hold ids, URLs, the fields (pictures as digests) and results,
and every record passes through ``redaction`` on its way to the disk, so a key that fal's answer
echoed is not written either.
Lines that cannot be read (a crash mid-write, a hand edit) are skipped with a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from .private_files import private_folder, write_private
from .redaction import redact_value
from .status import RequestHandle

try:
    import fcntl
except ImportError:  # Windows: appends of one line stay whole there too, without the lock.
    fcntl = None

log = logging.getLogger("fal_core")

RETENTION = 24 * 3600.0
# How long what a request cost is kept, for the spend totals (30 days).
SPEND_WINDOW = 30 * 24 * 3600.0
DEFAULT_PATH = Path.home() / ".local" / "state" / "comfyui-fal-sd3" / "journal.jsonl"
PENDING, COMPLETED, UNKNOWN, FAILED, CANCELLED = "pending", "completed", "unknown", "failed", "cancelled"
REUSABLE = (PENDING, COMPLETED)


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
    return {k: (f"data:<sha256 {digest(v)[:16]}>" if isinstance(v, str) and v.startswith("data:") else v)
            for k, v in fields.items()}


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

    @property
    def handle(self) -> RequestHandle | None:
        if not self.request_id or not self.urls:
            return None
        return RequestHandle(self.app_id, self.request_id, self.urls["status_url"], self.urls["response_url"],
                             self.urls["cancel_url"])


def default_path() -> Path:
    """``FAL_JOURNAL`` if set, else a journal in the user's state folder."""
    return Path(os.environ.get("FAL_JOURNAL") or DEFAULT_PATH)


def _line(record: Mapping[str, Any]) -> bytes:
    """A record as the journal stores it. The one write boundary: whatever fal's answers echoed,
    no key reaches the disk."""
    return (json.dumps(redact_value(dict(record)), separators=(",", ":")) + "\n").encode()


class Journal:
    def __init__(self, path: Path | str, *, retention: float = RETENTION) -> None:
        self.path = Path(path)
        self.retention = retention

    # --- writing ---------------------------------------------------------------------------

    def submitted(self, fp: str, handle: RequestHandle, fields: Mapping[str, Any],
                  cost: Mapping[str, Any] | None = None) -> None:
        """fal accepted the request (and will charge for it): ``cost`` is its price,
        ``{"amount", "currency", "source"}``, which ``fal_core.spend`` adds up."""
        self._append(fp, PENDING, app_id=handle.app_id, request_id=handle.request_id,
                     urls={k: v for k, v in handle.to_json().items() if k.endswith("_url")}, fields=describe(fields),
                     cost=dict(cost) if cost is not None else None)

    def completed(self, fp: str, request_id: str, result: Any) -> None:
        self._append(fp, COMPLETED, request_id=request_id, result=result)

    def unknown(self, fp: str, app_id: str, fields: Mapping[str, Any], error: str) -> None:
        self._append(fp, UNKNOWN, app_id=app_id, fields=describe(fields), error=error)

    def failed(self, fp: str, request_id: str | None, error: str) -> None:
        self._append(fp, FAILED, request_id=request_id, error=error)

    def cancelled(self, fp: str, request_id: str | None) -> None:
        self._append(fp, CANCELLED, request_id=request_id)

    def _append(self, fp: str, state: str, **facts: Any) -> None:
        record = {"fingerprint": fp, "state": state, "time": time.time(),
                  **{k: v for k, v in facts.items() if v is not None}}
        line = _line(record)
        private_folder(self.path.parent)
        with self._locked():
            # Opened per record, so a compaction (which replaces the file) never strands a writer
            # on the old file; O_APPEND plus one write() keeps each line whole.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if fcntl is None:
            yield
            return
        private_folder(self.path.parent)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # --- reading ---------------------------------------------------------------------------

    def _records(self) -> list[dict]:
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        records, bad = [], 0
        for line in lines:
            try:
                record = json.loads(line)
                if isinstance(record, dict) and isinstance(record.get("fingerprint"), str) and "state" in record:
                    records.append(record)
                    continue
            except ValueError:
                pass
            bad += line.strip() != b""
        if bad:
            log.warning("fal journal %s: skipped %d unreadable line(s)", self.path, bad)
        return records

    def records(self) -> list[dict]:
        """Every readable record, oldest first, including those past the retention window."""
        with self._locked():
            return self._records()

    def entries(self) -> list[Entry]:
        """Every fingerprint's latest state within the retention window, newest first."""
        with self._locked():  # so a line being appended is never read half-written
            records = self._records()
        merged: dict[str, dict] = {}
        for record in records:
            merged.setdefault(record["fingerprint"], {}).update(record)
        horizon = time.time() - self.retention
        entries = [Entry(fingerprint=m["fingerprint"], state=m["state"], time=m["time"], app_id=m.get("app_id"),
                         request_id=m.get("request_id"), urls=m.get("urls"), fields=m.get("fields"),
                         result=m.get("result"), error=m.get("error"))
                   for m in merged.values() if m.get("time", 0) >= horizon]
        return sorted(entries, key=lambda e: e.time, reverse=True)

    def lookup(self, fp: str) -> Entry | None:
        return next((e for e in self.entries() if e.fingerprint == fp), None)

    def find_request(self, request_id: str) -> Entry | None:
        return next((e for e in self.entries() if e.request_id == request_id), None)

    def prune(self) -> int:
        """Drop the records of entries past the retention window; returns how many lines went.

        What a request cost stays for ``SPEND_WINDOW`` (the spend totals), as a record reduced to
        its id, time and cost, which ``entries`` ignores as it is past the retention window.
        """
        with self._locked():
            records = self._records()
            latest: dict[str, float] = {}
            for record in records:
                latest[record["fingerprint"]] = max(latest.get(record["fingerprint"], 0.0), record.get("time", 0.0))
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
            os.replace(tmp, self.path)
            return len(records) - len(kept)


class ResultFiles:
    """Downloaded result files kept beside the journal, by URL, so a reused result costs no
    download either. Files past the retention window are removed by ``prune``."""

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

    def prune(self) -> int:
        removed = 0
        horizon = time.time() - self.retention
        for path in self.folder.glob("*"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < horizon:
                    path.unlink()
                    removed += 1
        return removed
