"""What a fal run costs: the unit price from fal's pricing API, kept a day, never waited for.

``PriceCache.current()`` answers at once from what is known (fal's last answer, kept in a small
JSON file, or the published price), so an editor or a node never waits on the network for a
price; ``refresh()`` asks fal's Platform API (``GET {api_url}/models/pricing?endpoint_id=…``)
when the known price is older than a day. A key may not be allowed to read prices (fal answers
401/403): the published price is then used, marked as such, and fal is asked again an hour later,
not on every call.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import AuthError, ConfigError, FalError, HTTPStatusError, ResponseError
from .private_files import private_folder
from .retry import RetryPolicy
from .schema import ENDPOINT, SD3, Endpoint
from .transport import Transport

log = logging.getLogger("fal_core")

MAX_AGE = 24 * 3600.0
RETRY_AFTER_FAILURE = 3600.0
# The published prices of the endpoints known by id (an Endpoint value carries its own).
PUBLISHED = {SD3.app_id: SD3.published_price}
PUBLISHED_WHERE = "fal's model page"
PER_IMAGE_UNITS = ("image", "images")
# A price answer is a few hundred bytes; anything near this is not one.
MAX_ANSWER_BYTES = 1 << 20
_RETRY = RetryPolicy(attempts=2)

FAL, CACHE, PUBLISHED_SOURCE = "fal", "cache", "published"


@dataclass(frozen=True)
class Price:
    """One endpoint's unit price. ``source``: "fal" (fal's answer of the last day), "cache"
    (fal's answer, older than a day) or "published" (fal gave none); ``note`` says which, for people."""

    endpoint_id: str
    unit_price: float
    unit: str
    currency: str
    source: str
    note: str

    @property
    def per_image(self) -> bool:
        return self.unit.lower() in PER_IMAGE_UNITS

    def cost(self, images: int) -> float:
        """The price of ``images`` results. A unit other than per image (fal prices some apps by
        megapixel or second) is not guessed at: the published per-image price stands in."""
        if self.per_image:
            return self.unit_price * images
        published = PUBLISHED.get(self.endpoint_id)
        if published is None:
            raise ConfigError(f"The price of {self.endpoint_id} is per {self.unit}, not per image, and no "
                              "per-image price is published for it: its cost cannot be computed.")
        return published[0] * images

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))


def parse_prices(body: Any, endpoint_id: str) -> tuple[float, str, str]:
    """``(unit_price, unit, currency)`` of ``endpoint_id`` in fal's pricing answer, or ResponseError."""
    prices = body.get("prices") if isinstance(body, Mapping) else None
    if not isinstance(prices, list):
        raise ResponseError(f"fal's pricing answer has no 'prices' list: {str(body)[:200]!r}")
    for item in prices:
        if isinstance(item, Mapping) and item.get("endpoint_id") == endpoint_id:
            price, unit, currency = item.get("unit_price"), item.get("unit"), item.get("currency")
            if (isinstance(price, bool) or not isinstance(price, (int, float)) or not math.isfinite(price)
                    or price < 0 or not isinstance(unit, str) or not unit.strip()
                    or not isinstance(currency, str) or not currency.strip()):
                raise ResponseError(f"fal's price of {endpoint_id} is not a price: {str(item)[:200]!r}")
            return float(price), unit.strip(), currency.strip().upper()
    raise ResponseError(f"fal's pricing answer has no price for {endpoint_id}")


def _reason(exc: FalError) -> str:
    if isinstance(exc, AuthError):
        return (f"this key may not read fal's prices (HTTP {exc.status_code})" if exc.status_code == 403
                else f"fal refused the key (HTTP {exc.status_code})")
    if isinstance(exc, HTTPStatusError):
        return f"fal answered HTTP {exc.status_code}"
    if isinstance(exc, ConfigError):
        return "no fal key is set" if "key" in str(exc).lower() else str(exc)[:200]
    return str(exc).split(". ")[0][:200]


class PriceCache:
    """Unit prices by endpoint, in memory and in ``path`` (JSON, replaced atomically)."""

    def __init__(self, path: Path | str, *, max_age: float = MAX_AGE,
                 retry_after_failure: float = RETRY_AFTER_FAILURE) -> None:
        self.path = Path(path)
        self.max_age = max_age
        self.retry_after_failure = retry_after_failure
        # Kept here too: a price fal gave still counts when the state folder cannot be written.
        self._memory: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if (isinstance(data, dict) and isinstance(data.get("prices"), dict)
                    and isinstance(data.get("failures"), dict)):
                return data
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("fal price cache %s unreadable (%s); using the published price", self.path, exc)
        return {"prices": {}, "failures": {}}

    def _state(self) -> dict[str, Any]:
        if self._memory is None:
            self._memory = self._load()
        return self._memory

    def _known(self, endpoint_id: str) -> dict | None:
        entry = self._state()["prices"].get(endpoint_id)
        try:
            parse_prices({"prices": [{**entry, "endpoint_id": endpoint_id}]}, endpoint_id)
            float(entry["fetched_at"])
        except (ResponseError, TypeError, KeyError, ValueError):
            return None
        return entry

    def current(self, endpoint: str | Endpoint = SD3, now: float | None = None) -> Price | None:
        """The price to show now, without any network call; None when nothing is known."""
        if isinstance(endpoint, Endpoint):
            endpoint_id, published = endpoint.app_id, endpoint.published_price
        else:
            endpoint_id, published = endpoint, PUBLISHED.get(endpoint)
        now = time.time() if now is None else now
        known = self._known(endpoint_id)
        failure = self._state()["failures"].get(endpoint_id) or {}
        problem = f"; the last refresh failed: {failure['reason']}" if isinstance(failure.get("reason"), str) else ""
        if known is not None:
            age = now - float(known["fetched_at"])
            fresh = age < self.max_age
            note = (f"fal's price, from its pricing API at {_when(known['fetched_at'])}"
                    + ("" if fresh else f", over a day old{problem or '; refreshing'}"))
            return Price(endpoint_id, float(known["unit_price"]), known["unit"], known["currency"],
                         FAL if fresh else CACHE, note)
        if published is None:
            return None
        reason = failure.get("reason") if isinstance(failure.get("reason"), str) else "not asked yet"
        return Price(endpoint_id, *published, PUBLISHED_SOURCE,
                     f"published price ({PUBLISHED_WHERE}), not confirmed by fal's pricing API: {reason}")

    def needs_refresh(self, endpoint_id: str = ENDPOINT, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        known = self._known(endpoint_id)
        if known is not None and now - float(known["fetched_at"]) < self.max_age:
            return False
        failed_at = (self._state()["failures"].get(endpoint_id) or {}).get("time")
        return not (isinstance(failed_at, (int, float)) and now - failed_at < self.retry_after_failure)

    def forget_failures(self) -> None:
        """Ask fal again at the next refresh (the key changed, so its answer may too)."""
        self._state()["failures"].clear()

    async def refresh(self, transport: Transport, endpoint_id: str = ENDPOINT) -> Price | None:
        """Ask fal for the price, keep the answer (or why there is none), return ``current()``.

        Never raises for fal's or the network's failures: a price display must not break a run.
        """
        state = self._state()
        try:
            response = await transport.request(
                "GET", f"{transport.config.api_url}/models/pricing", params={"endpoint_id": endpoint_id},
                what=f"price of {endpoint_id}", retry=_RETRY, max_bytes=MAX_ANSWER_BYTES)
            try:
                body = json.loads(response.content)
            except ValueError:
                raise ResponseError(f"fal's pricing answer is not JSON: {response.text[:200]!r}") from None
            unit_price, unit, currency = parse_prices(body, endpoint_id)
        except FalError as exc:
            log.info("fal price of %s not refreshed: %s", endpoint_id, exc)
            state["failures"][endpoint_id] = {"time": time.time(), "reason": _reason(exc)}
        else:
            state["prices"][endpoint_id] = {"unit_price": unit_price, "unit": unit, "currency": currency,
                                            "fetched_at": time.time()}
            state["failures"].pop(endpoint_id, None)
        self._save(state)
        return self.current(endpoint_id)

    def _save(self, state: dict) -> None:
        try:
            private_folder(self.path.parent)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".prices-")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(state, f)
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            log.warning("fal price cache %s not written (%s); the price is kept until restart", self.path,
                        exc.strerror or exc)
