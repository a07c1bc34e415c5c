"""What a running fal node shows: one line per request, turned into the node's progress text,
its progress bar value and the event the front-end extension draws."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..fal_core.redaction import redact, redact_value

if TYPE_CHECKING:
    from ..fal_core.queue import Update

# Where each phase puts an item on the progress bar, out of STEPS.
STEPS = 10
_PROGRESS = {"waiting": 0, "uploading": 1, "submitting": 2, "in_queue": 3, "in_progress": 5,
             "completed": 8, "downloading": 9, "done": 10}
_LABELS = {"waiting": "waiting", "uploading": "uploading", "submitting": "submitting", "in_queue": "in queue",
           "in_progress": "running", "completed": "finished", "downloading": "downloading", "done": "done",
           "failed": "failed", "cancelled": "cancelled"}
EVENT = "fal_sd3.status"


@dataclass
class ItemStatus:
    phase: str = "waiting"
    queue_position: int | None = None
    request_id: str | None = None
    last_log: str | None = None


@dataclass
class RunStatus:
    node_id: str | None
    count: int
    started: float = field(default_factory=time.monotonic)
    items: list[ItemStatus] = field(default_factory=list)
    error: str | None = None
    warning: str | None = None
    finished: bool = False

    def __post_init__(self) -> None:
        self.items = [ItemStatus() for _ in range(self.count)]

    def apply(self, index: int, update: Update) -> None:
        item = self.items[index]
        item.phase = update.phase
        item.queue_position = update.queue_position
        item.request_id = update.request_id or item.request_id
        if update.new_logs:
            item.last_log = update.new_logs[-1].message

    def finish(self, phase: str, error: str | None = None) -> None:
        """End the run: every item that did not finish gets ``phase``."""
        for item in self.items:
            if item.phase != "done":
                item.phase = phase
        self.error = error
        self.finished = True

    def progress(self) -> int:
        return sum(_PROGRESS.get(item.phase, STEPS) for item in self.items)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def text(self) -> str:
        head = f"fal SD3 img2img · {self.count} request{'s' if self.count != 1 else ''} · {self.elapsed():.1f} s"
        lines = [head]
        for i, item in enumerate(self.items):
            parts = [f"#{i + 1} {_LABELS.get(item.phase, item.phase)}"]
            if item.queue_position is not None:
                parts[0] += f" (position {item.queue_position})"
            if item.request_id:
                parts.append(item.request_id)
            if item.last_log and item.phase in ("in_progress", "completed"):
                parts.append(f"fal: {item.last_log[:80]}")
            lines.append(" · ".join(parts))
        if self.warning:
            lines.append(f"warning: {self.warning}")
        if self.error:
            lines.append(f"error: {self.error}")
        return redact("\n".join(lines))

    def event(self) -> dict:
        return redact_value({
            "node": self.node_id,
            "elapsed": round(self.elapsed(), 2),
            "finished": self.finished,
            "error": self.error,
            "warning": self.warning,
            "items": [{"phase": it.phase, "queue_position": it.queue_position, "request_id": it.request_id,
                       "log": it.last_log} for it in self.items],
        })
