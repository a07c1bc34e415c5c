"""A FalClient set up for ComfyUI: the key from the environment or the settings dialog's file;
uploads, the request journal and downloaded results kept in the pack's state folder."""

from __future__ import annotations

import os

from ..fal_core.client import FalClient
from ..fal_core.config import FalConfig
from ..fal_core.journal import Journal, ResultFiles
from ..fal_core.storage import UploadCache
from . import comfy

KEY_HINT = "or enter it in ComfyUI's settings (Settings > fal > fal API key)"


def config() -> FalConfig:
    """FAL_KEY (or FAL_KEY_ID + FAL_KEY_SECRET) wins over the key file; read on every run, so a
    key saved in the settings takes effect without a restart."""
    return FalConfig.from_env(key_file=comfy.key_file(), missing_key_hint=KEY_HINT)


def open_client() -> FalClient:
    return FalClient(config(), upload_cache=UploadCache(comfy.state_dir() / "uploads.json"))


def journal() -> Journal:
    """The request journal: ``FAL_JOURNAL``, else ``journal.jsonl`` in the pack's state folder."""
    return Journal(os.environ.get("FAL_JOURNAL") or comfy.state_dir() / "journal.jsonl")


def result_files(journal: Journal) -> ResultFiles:
    return ResultFiles(journal.path.parent / "results")
