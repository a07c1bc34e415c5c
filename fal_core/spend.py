"""What was paid to fal, from the request journal: today, the last 7 and the last 30 days.

A request costs money when fal accepts its submit; the journal's record of that moment carries
its price (``cost``). A result reused from the journal writes no such record, so it costs
nothing here, as at fal. Days are local calendar days: "7 days" is today and the six before.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .journal import Journal

PERIODS = (("today", 1), ("7 days", 7), ("30 days", 30))


@dataclass(frozen=True)
class Total:
    period: str
    since: float
    requests: int
    amount: float
    currency: str
    unpriced: int
    """Accepted requests whose record has no price (journaled before prices were)."""


def day_start(days_back: int = 0, now: float | None = None) -> float:
    """The local midnight ``days_back`` days before today's, as a timestamp."""
    today = dt.datetime.fromtimestamp(time.time() if now is None else now).date()
    return dt.datetime.combine(today - dt.timedelta(days=days_back), dt.time()).timestamp()


def _paid(records: Iterable[Mapping[str, Any]]) -> list[tuple[float, float | None, str | None]]:
    """(time, amount, currency) of each accepted submit; amount None when it has no price."""
    paid = []
    for record in records:
        if record.get("state") != "pending" or not record.get("request_id"):
            continue
        cost = record.get("cost")
        cost = cost if isinstance(cost, Mapping) else {}
        amount, currency = cost.get("amount"), cost.get("currency")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            amount = None
        paid.append((float(record.get("time", 0.0)), None if amount is None else float(amount),
                     currency if amount is not None and isinstance(currency, str) else None))
    return paid


def totals(journal: Journal, now: float | None = None) -> list[Total]:
    """Today's, the last 7 days' and the last 30 days' spend."""
    paid = _paid(journal.records())
    out = []
    for label, days in PERIODS:
        since = day_start(days - 1, now)
        window = [(amount, currency) for when, amount, currency in paid if when >= since]
        currencies = {currency for amount, currency in window if amount is not None and currency}
        out.append(Total(label, since, len(window), round(sum(a for a, _ in window if a is not None), 6),
                         "/".join(sorted(currencies)) or "USD", sum(a is None for a, _ in window)))
    return out


def spent_today(journal: Journal, now: float | None = None) -> float:
    return totals(journal, now)[0].amount


def table(rows: list[Total]) -> str:
    """The totals as a plain-text table, as ``python -m fal_core journal --spend`` prints them."""
    lines = [f"{'period':<8}  {'since':<10}  {'requests':>8}  {'spent':>10}"]
    for row in rows:
        since = time.strftime("%Y-%m-%d", time.localtime(row.since))
        lines.append(f"{row.period:<8}  {since:<10}  {row.requests:>8}  {row.amount:>10.3f} {row.currency}")
    unpriced = rows[-1].unpriced if rows else 0
    if unpriced:
        lines.append(f"({unpriced} accepted request(s) have no recorded price and count as 0: "
                     "they were journaled before prices were)")
    return "\n".join(lines)
