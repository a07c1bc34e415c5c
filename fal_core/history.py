"""fal's request history: the Platform API's ``models/requests/by-endpoint`` route.

It lists a key's own requests of one endpoint once they have ended (sorted by end time), with
their input and output JSON when asked for ``expand=payloads``. The pack reads it for two
things: to find out whether a submit whose answer was lost was accepted (a request of the same
endpoint, sent in the window around our submit, whose input matches ours field for field), and
to recover the output of a request whose result fal's queue no longer keeps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Iterable, Mapping

from .errors import ResponseError
from .journal import describe
from .transport import Transport

# Small pages: with payloads, each item carries its input, and an inline picture is up to 1.4 MB.
PAGE_SIZE = 10
# A hostile or broken answer may claim more pages forever; a real window never needs this many.
MAX_PAGES = 200


@dataclass(frozen=True)
class HistoryItem:
    """One ended request as fal's history lists it."""

    request_id: str
    endpoint_id: str | None
    sent_at: float | None
    ended_at: float | None
    status_code: int | None
    json_input: Any = None
    json_output: Any = None

    @classmethod
    def parse(cls, data: Any) -> "HistoryItem | None":
        """An item, or None for one without a usable request id (skipped, never trusted)."""
        if not isinstance(data, Mapping) or not isinstance(data.get("request_id"), str) or not data["request_id"]:
            return None
        code = data.get("status_code")
        return cls(
            request_id=data["request_id"],
            endpoint_id=data.get("endpoint_id") if isinstance(data.get("endpoint_id"), str) else None,
            sent_at=_seconds(data.get("sent_at")),
            ended_at=_seconds(data.get("ended_at")),
            status_code=code if isinstance(code, int) and not isinstance(code, bool) else None,
            json_input=data.get("json_input"),
            json_output=data.get("json_output"),
        )

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    def matches(self, fields: Mapping[str, Any]) -> bool:
        """Whether its input holds every field of ``fields`` (as the journal describes them)."""
        if not isinstance(self.json_input, Mapping):
            return False
        sent = describe(self.json_input)
        return all(sent.get(name) == value for name, value in fields.items())


class History:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    @property
    def url(self) -> str:
        return f"{self.transport.config.api_url}/models/requests/by-endpoint"

    async def items(self, endpoint_id: str, *, start: float, end: float | None = None,
                    request_id: str | None = None) -> AsyncIterator[HistoryItem]:
        """Every ended request of ``endpoint_id`` in [start, end], page after page.

        Raises AuthError when the key may not read the history (401/403).
        """
        params: dict[str, Any] = {"endpoint_id": endpoint_id, "start": _iso(start), "limit": PAGE_SIZE,
                                  "expand": "payloads"}
        if end is not None:
            params["end"] = _iso(end)
        if request_id is not None:
            params["request_id"] = request_id
        for _ in range(MAX_PAGES):
            response = await self.transport.request("GET", self.url, what="fal's request history", params=params)
            try:
                page = json.loads(response.text)
            except ValueError:
                raise ResponseError(f"fal's request history is not JSON: {response.text[:200]!r}") from None
            if not isinstance(page, Mapping) or not isinstance(page.get("items"), list):
                raise ResponseError(f"fal's request history has no list of items: {str(page)[:200]!r}")
            for raw in page["items"]:
                item = HistoryItem.parse(raw)
                if item is not None:
                    yield item
            cursor = page.get("next_cursor")
            if page.get("has_more") is not True or not isinstance(cursor, str) or not cursor:
                return
            params["cursor"] = cursor

    async def find(self, endpoint_id: str, fields: Mapping[str, Any], *, sent_from: float, sent_until: float,
                   exclude: Iterable[str] = ()) -> list[HistoryItem]:
        """The requests sent in [sent_from, sent_until] whose input matches ``fields``.

        ``exclude``: request ids already known to belong to other jobs.
        """
        skip = set(exclude)
        found: dict[str, HistoryItem] = {}
        async for item in self.items(endpoint_id, start=sent_from):
            if item.request_id in skip or item.sent_at is None or not sent_from <= item.sent_at <= sent_until:
                continue
            if item.endpoint_id not in (None, endpoint_id):
                continue
            if item.matches(fields):
                found[item.request_id] = item
        return list(found.values())

    async def get(self, endpoint_id: str, request_id: str, *, since: float) -> HistoryItem | None:
        """The history's record of one request, or None when it lists no such request."""
        async for item in self.items(endpoint_id, start=since, request_id=request_id):
            if item.request_id == request_id:
                return item
        return None


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")


def _seconds(value: Any) -> float | None:
    """An ISO 8601 time (``Z`` or an offset) as epoch seconds; None when it is not one."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()
