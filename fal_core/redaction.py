"""The one place a fal key is taken out of text before anyone sees it or it is stored.

Every key this process holds is registered here the moment it is wrapped in a ``Secret``. fal's
answers are not ours: an error page or a result may echo the ``Authorization`` header, literally,
JSON-escaped (``\\u0030``) or URL-encoded (``%3A``). :func:`redact` replaces each registered key,
and each of its two halves (id and secret, when 6 characters or longer), in any mix of those forms,
by ``***``.

Everything that leaves the pack for a person or a disk goes through it: the message and the
attributes of every :class:`~fal_core.errors.FalError`, every line of the ``fal_core`` and
``fal_sd3`` loggers (and of httpx's and httpcore's, which log answers' headers), every journal
record, the nodes' outputs and status, and the command line's output. Quote fal's answers with
:func:`excerpt`, which redacts before it shortens, so that a cut never leaves half a key behind.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

MASK = "***"
# Shorter pieces would also match ordinary words; fal's key ids and secrets are far longer.
MIN_PART = 6

_lock = threading.Lock()
_parts: set[str] = set()
# Replaced whole (never changed in place), so readers on other threads need no lock.
_ordered: tuple[str, ...] = ()
_pattern: re.Pattern[str] | None = None


def register(key: str) -> None:
    """Redact ``key`` (and its halves) from now on, in this process."""
    global _pattern, _ordered
    parts = {p for p in (key, *key.split(":")) if len(p) >= MIN_PART}
    with _lock:
        if parts <= _parts:
            return
        _parts.update(parts)
        # Longest first, so the whole key wins over its halves.
        ordered = tuple(sorted(_parts, key=len, reverse=True))
        _ordered = ordered
        _pattern = re.compile("|".join(_encoded(p) for p in ordered))


def _encoded(part: str) -> str:
    """A pattern for ``part`` where each character may be literal, %XX or \\u00XX (any case)."""
    return "".join(f"(?:{re.escape(c)}|(?i:%{ord(c):02x}|\\\\u{ord(c):04x}))" for c in part)


def redact(text: str) -> str:
    """``text`` with every registered key, in every form, replaced by ``***``."""
    pattern = _pattern
    if pattern is None or not text:
        return text
    if "%" not in text and "\\" not in text:
        # Only literal forms are possible: plain replacement is many times faster than the pattern
        # on a multi-megabyte answer.
        for part in _ordered:
            if part in text:
                text = text.replace(part, MASK)
        return text
    return pattern.sub(MASK, text)


def redact_value(value: Any) -> Any:
    """A JSON-like value (dicts, lists, strings) with :func:`redact` applied to every string in it."""
    if _pattern is None:
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(k) if isinstance(k, str) else k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v) for v in value]
    if isinstance(value, tuple):
        return tuple(redact_value(v) for v in value)
    return value


def excerpt(value: Any, limit: int = 200) -> str:
    """The quoted start of ``value``'s text, for an error message: redacted, then shortened."""
    return repr(redact(value if isinstance(value, str) else str(value))[:limit])


class RedactingFilter(logging.Filter):
    """Applies :func:`redact` to a log record's whole message, arguments included."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _pattern is not None:
            record.msg = redact(record.getMessage())
            record.args = None
        return True


_FILTER = RedactingFilter()
# A logger's filter does not reach its children's records: httpcore logs (at DEBUG) the answers'
# headers, echoes included, through each of these.
LOGGERS = ("fal_core", "fal_sd3", "httpx", "httpcore.connection", "httpcore.http11", "httpcore.http2",
           "httpcore.proxy")
for _name in LOGGERS:
    logging.getLogger(_name).addFilter(_FILTER)
