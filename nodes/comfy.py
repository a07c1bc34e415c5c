"""The few ComfyUI services the nodes use, reached lazily so the nodes also run without ComfyUI.

ComfyUI's modules (``comfy.utils``, ``comfy.model_management``, ``server``, ``folder_paths``) exist
only inside a ComfyUI process. Outside it (unit tests, other hosts) each service degrades to a
harmless stand-in: no progress bar, never interrupted, a state folder of our own.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Callable

# How often a node waiting on a task looks at ComfyUI's interrupt flag: Cancel reaches fal within
# a second.
INTERRUPT_POLL = 0.1


class Interrupted(Exception):
    """Raised for an interrupt when ComfyUI's own InterruptProcessingException is not available."""


def _module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def interrupted() -> bool:
    """Whether the user pressed Cancel (or called /interrupt). Does not clear the flag."""
    mm = _module("comfy.model_management")
    return bool(mm and mm.processing_interrupted())


def interrupt_exception() -> Exception:
    """ComfyUI's interrupt exception, which it reports as "interrupted" rather than an error."""
    mm = _module("comfy.model_management")
    if mm is not None:
        # Clear the flag as ComfyUI's own throw_exception_if_processing_interrupted does, so the
        # next prompt does not start interrupted.
        mm.interrupt_current_processing(False)
        return mm.InterruptProcessingException()
    return Interrupted("interrupted")


def is_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is ComfyUI's interrupt (which its progress hook raises on Cancel)."""
    mm = _module("comfy.model_management")
    return isinstance(exc, Interrupted) or (mm is not None and isinstance(exc, mm.InterruptProcessingException))


async def run_unless_interrupted(task: asyncio.Future, stopped: Callable[[], bool] = lambda: False) -> bool:
    """Wait for ``task``; True when it ended, False when the user pressed Cancel (or ``stopped()``
    turned true) first. Then the task is cancelled, and waited for: the one way the pack stops
    work, which cancels a fal request at fal."""
    while not task.done():
        if stopped() or interrupted():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return False
        await asyncio.wait([task], timeout=INTERRUPT_POLL)
    return True


class Progress:
    """ComfyUI's progress bar, or nothing outside ComfyUI.

    No progress text: front end 1.27 saves that text as a widget value, which shifts a node's
    saved values on reopening; the pack draws its own status instead.
    """

    def __init__(self, total: int, node_id: str | None) -> None:
        utils = _module("comfy.utils")
        self._bar = utils.ProgressBar(total, node_id=node_id) if utils and node_id is not None else None

    def update(self, value: int, total: int | None = None) -> None:
        if self._bar is not None:
            # ComfyUI's hook raises its interrupt exception from here when Cancel was pressed.
            self._bar.update_absolute(value, total)


def server_instance():
    server = _module("server")
    return getattr(getattr(server, "PromptServer", None), "instance", None)


def send_event(event: str, data: dict) -> None:
    """Push a custom event to the front end (thread-safe in ComfyUI); a no-op outside it."""
    server = server_instance()
    if server is not None:
        server.send_sync(event, data)


def state_dir() -> Path:
    """Where the pack keeps its own files (key file, journal, upload cache).

    ``FAL_SD3_STATE_DIR`` wins; inside ComfyUI it is ``<user dir>/fal_sd3``, outside the pack's
    folder so that updating the pack never loses it; otherwise ``~/.local/state/comfyui-fal-sd3``.
    """
    override = os.environ.get("FAL_SD3_STATE_DIR")
    if override:
        return Path(override)
    folder_paths = _module("folder_paths")
    if folder_paths is not None:
        return Path(folder_paths.get_user_directory()) / "fal_sd3"
    return Path.home() / ".local" / "state" / "comfyui-fal-sd3"


def key_file() -> Path:
    """The file the settings dialog writes the fal key to (readable by its owner only)."""
    return state_dir() / "fal_key"


def model_folders(kind: str) -> list[Path]:
    """ComfyUI's folders for ``kind`` ("diffusers", "checkpoints"), or none outside ComfyUI."""
    folder_paths = _module("folder_paths")
    if folder_paths is None:
        return []
    try:
        return [Path(p) for p in folder_paths.get_folder_paths(kind)]
    except KeyError:
        return []


def torch_device():
    """The device ComfyUI runs models on (honours --cpu and its GPU choice), or None outside it."""
    mm = _module("comfy.model_management")
    return mm.get_torch_device() if mm is not None else None


def free_models() -> None:
    """Unload ComfyUI's models and empty its cache, before a pipeline it does not manage loads."""
    mm = _module("comfy.model_management")
    if mm is not None:
        mm.unload_all_models()
        mm.soft_empty_cache()


def model_management_modules() -> tuple[ModuleType, ModuleType] | None:
    """ComfyUI's ``comfy.model_management`` and ``comfy.model_patcher``, or None outside ComfyUI."""
    mm, mp = _module("comfy.model_management"), _module("comfy.model_patcher")
    return (mm, mp) if mm is not None and mp is not None else None
