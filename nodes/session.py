"""A FalClient set up for ComfyUI: the key from the environment or the settings dialog's file;
uploads, the request journal, downloaded results, prices and the daily budget kept in the pack's
state folder. The nodes' clients live on fal_core's background loop, so their connections
outlive each prompt."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Mapping

from ..fal_core import budget as budgets
from ..fal_core import spend
from ..fal_core.background import Background, shared
from ..fal_core.client import FalClient
from ..fal_core.config import FalConfig
from ..fal_core.journal import Journal, ResultFiles
from ..fal_core.journal import default_path as default_journal_path
from ..fal_core.pricing import PriceCache
from . import comfy

KEY_HINT = "or enter it in ComfyUI's settings (Settings > fal > fal API key)"
KEY_PLACE = "ComfyUI's settings dialog (Settings > fal > fal API key)"
BUDGET_PLACE = "ComfyUI's settings (Settings > fal)"


def config(env: Mapping[str, str] | None = None, key_file: Path | None = None) -> FalConfig:
    """FAL_KEY (or FAL_KEY_ID + FAL_KEY_SECRET) wins over the key file; read on every run, so a
    key saved in the settings takes effect without a restart."""
    return FalConfig.from_env(env, key_file=key_file or comfy.key_file(), missing_key_hint=KEY_HINT,
                              key_place=KEY_PLACE)


def prepare() -> threading.Thread:
    """Load what a fal run needs and start the background loop, in a daemon thread, sending
    nothing. ComfyUI's server calls it at start, so that the first run does not pay for it
    (about 250 ms: httpx and the codecs, the TLS context, the loop)."""
    thread = threading.Thread(target=_prepare, name="fal_sd3-prepare", daemon=True)
    thread.start()
    return thread


def _prepare() -> None:
    import anyio
    from PIL import PngImagePlugin  # noqa: F401  (results are PNG)

    from ..fal_core import img2img  # noqa: F401
    # httpcore's network backend loads anyio's asyncio support on its first call.
    asyncio.run_coroutine_threadsafe(anyio.sleep(0), engine().loop).result()


def engine() -> Background:
    """The loop every fal node hands its work to (see fal_core.background)."""
    return shared()


def client(cfg: FalConfig | None = None) -> FalClient:
    """The client for ``cfg`` (default: the current configuration); use it on ``engine()``'s loop."""
    return shared().client(cfg or config(), comfy.state_dir() / "uploads.json")


def journal() -> Journal:
    """The request journal: ``FAL_JOURNAL``, else ``journal.jsonl`` in the pack's state folder."""
    return Journal(default_journal_path(comfy.state_dir()))


def result_files(journal: Journal) -> ResultFiles:
    return ResultFiles(journal.path.parent / "results")


_price_caches: dict[Path, PriceCache] = {}


def price_cache() -> PriceCache:
    """One cache per state folder for the process, so a price fetched is not read from disk again."""
    path = comfy.state_dir() / "prices.json"
    return _price_caches.setdefault(path, PriceCache(path))


def budget_file() -> Path:
    return comfy.state_dir() / "budget.json"


def budget(env: Mapping[str, str] | None = None) -> budgets.Budget:
    return budgets.read(budget_file(), env)


def check_budget(book: Journal, price: float, currency: str) -> None:
    """Refuse (BudgetExceeded) a run of ``price`` that would pass today's budget; nothing is sent.

    The run's full price counts, even when the journal will serve some of it for free."""
    limit = budget()
    if limit.daily is not None:
        budgets.check(limit, spend.spent_today(book), price, currency, file_place=BUDGET_PLACE)
