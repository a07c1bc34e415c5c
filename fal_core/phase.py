"""The phases of one request of a job, as status updates, events and logs name them.

A module of its own, with no imports, so that the nodes read it when ComfyUI imports the pack
without loading httpx.
"""

from __future__ import annotations

from enum import Enum


class Phase(str, Enum):
    """Where one request of a job is. The value is what status events and logs carry; the nodes
    add WAITING before and DONE, FAILED or CANCELLED at the end."""

    WAITING = "waiting"
    UPLOADING = "uploading"
    SUBMITTING = "submitting"
    CHECKING_HISTORY = "checking_history"
    IN_QUEUE = "in_queue"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    DOWNLOADING = "downloading"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value
