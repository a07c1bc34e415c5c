"""An optional daily budget: a run that would pass it is refused before anything is sent.

The limit comes from ``FAL_SD3_DAILY_BUDGET`` (dollars) or, when that is unset, from a small
JSON file that a host writes (the ComfyUI settings dialog). The environment wins, as it does for
the key. The check compares today's spend (``fal_core.spend``) plus the run's price with it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError, FalError
from .private_files import private_folder

ENV = "FAL_SD3_DAILY_BUDGET"


class BudgetExceeded(FalError):
    """The run would take today's spend past the daily budget; nothing was sent."""

    def __init__(self, message: str, *, spent: float, price: float, limit: float) -> None:
        self.spent, self.price, self.limit = spent, price, limit
        super().__init__(message)


@dataclass(frozen=True)
class Budget:
    daily: float | None
    source: str | None
    """"env", "file", or None when no budget is set."""


def parse_amount(value: Any, where: str) -> float | None:
    """A budget in dollars: a number >= 0, or None / "" for no budget. ``where`` names the field."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        amount = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        amount = math.nan
    if not math.isfinite(amount) or amount < 0:
        raise ConfigError(f"{where}={value!r}: a daily budget is an amount in dollars, 0 or more "
                          "(for example 5 or 2.50), or empty for no budget.")
    return amount


def read(path: Path, env: Mapping[str, str] | None = None) -> Budget:
    env = os.environ if env is None else env
    from_env = parse_amount(env.get(ENV), ENV)
    if from_env is not None:
        return Budget(from_env, "env")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Budget(None, None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Cannot read the daily budget file {path}: {exc}. Set the budget again in the "
                          "settings, or remove the file.") from None
    amount = parse_amount(data.get("daily_budget") if isinstance(data, dict) else data, f"daily_budget in {path}")
    return Budget(amount, "file" if amount is not None else None)


def save(path: Path, daily: float | None) -> None:
    """Write the budget (None removes it), replacing the file atomically."""
    if daily is None:
        path.unlink(missing_ok=True)
        return
    private_folder(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".budget-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"daily_budget": daily}, f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def check(budget: Budget, spent_today: float, price: float, currency: str = "USD", *,
          file_place: str = "the budget file") -> None:
    """Raise BudgetExceeded when ``spent_today + price`` passes the daily budget.

    ``file_place`` is how the host names where its users set the budget file's value."""
    if budget.daily is None or spent_today + price <= budget.daily + 1e-9:
        return
    where = ENV if budget.source == "env" else file_place
    raise BudgetExceeded(
        f"Daily fal budget: this run would cost {price:.3f} {currency}, {spent_today:.3f} {currency} is spent "
        f"today and the limit is {budget.daily:.3f} {currency} (set in {where}); nothing was sent to fal. "
        "Raise or clear the budget, or run again tomorrow.",
        spent=spent_today, price=price, limit=budget.daily)
