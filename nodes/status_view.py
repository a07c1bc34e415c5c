"""What a running fal node shows: one item per request, turned into its progress bar value and the
``fal_sd3.status`` event the front-end extension draws inside the node (web/lib/status_lines.js).

The node never sends ComfyUI's progress text: front end 1.27 saves that text as an extra widget
value, which shifts the node's widget values when the workflow is reopened.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..fal_core.phase import Phase
from ..fal_core.redaction import redact_value

if TYPE_CHECKING:
    from ..fal_core.queue import Update

# Where each phase puts an item on the progress bar, out of STEPS (an end phase: all of it).
STEPS = 10
_PROGRESS = {Phase.WAITING: 0, Phase.UPLOADING: 1, Phase.SUBMITTING: 2, Phase.CHECKING_HISTORY: 2,
             Phase.IN_QUEUE: 3, Phase.IN_PROGRESS: 5, Phase.COMPLETED: 8, Phase.DOWNLOADING: 9, Phase.DONE: 10}
# What the node shows for each phase; sent with every event, so the front end has no copy.
LABELS = {
    Phase.WAITING: "waiting", Phase.UPLOADING: "uploading", Phase.SUBMITTING: "submitting",
    Phase.CHECKING_HISTORY: "submit answer lost, checking fal's request history…", Phase.IN_QUEUE: "in queue",
    Phase.IN_PROGRESS: "running", Phase.COMPLETED: "finished", Phase.DOWNLOADING: "downloading",
    Phase.DONE: "done", Phase.FAILED: "failed", Phase.CANCELLED: "cancelled",
}
EVENT = "fal_sd3.status"


def label(phase: Phase, queue_position: int | None) -> str:
    """The words for one request's phase: "in queue (position 3)", "next in queue", "running"."""
    if phase is Phase.IN_QUEUE and queue_position == 0:
        return "next in queue"
    text = LABELS.get(phase) or str(phase).replace("_", " ")
    return text if queue_position is None else f"{text} (position {queue_position})"


@dataclass
class ItemStatus:
    phase: Phase = Phase.WAITING
    queue_position: int | None = None
    request_id: str | None = None
    last_log: str | None = None
    new_request: bool = False
    """Whether this run sent fal a new (paid) request; False when the journal served a result or the
    run reattached to a request an earlier run had paid for."""


@dataclass
class RunStatus:
    node_id: str | None
    num_images: int = 1
    started: float = field(default_factory=time.monotonic)
    items: list[ItemStatus] = field(default_factory=list)
    error: str | None = None
    warning: str | None = None
    outcome: str = "running"
    cost: dict | None = None
    """What one new request costs, as journaled: {"amount", "currency", "source"}."""

    def expect(self, count: int) -> None:
        """The run has ``count`` requests (one per picture), all waiting."""
        self.items = [ItemStatus() for _ in range(count)]

    @property
    def finished(self) -> bool:
        return self.outcome != "running"

    def apply(self, index: int, update: Update) -> None:
        item = self.items[index]
        item.phase = update.phase
        item.queue_position = update.queue_position
        item.request_id = update.request_id or item.request_id
        item.new_request = item.new_request or update.phase is Phase.SUBMITTING
        if update.new_logs:
            item.last_log = update.new_logs[-1].message

    def finish(self, outcome: str, error: str | None = None) -> None:
        """End the run ("done", "failed" or "cancelled"): every unfinished item gets that phase."""
        for item in self.items:
            if item.phase is not Phase.DONE:
                item.phase = Phase(outcome)
        self.error = error
        self.outcome = outcome

    def progress(self) -> int:
        return sum(_PROGRESS.get(item.phase, STEPS) for item in self.items)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def event(self) -> dict:
        return redact_value({
            "node": self.node_id,
            "elapsed": round(self.elapsed(), 2),
            "outcome": self.outcome,
            "finished": self.finished,
            "error": self.error,
            "warning": self.warning,
            "num_images": self.num_images,
            "cost": self.cost,
            "items": [{"phase": it.phase.value, "label": label(it.phase, it.queue_position),
                       "queue_position": it.queue_position, "request_id": it.request_id,
                       "log": it.last_log, "new_request": it.new_request} for it in self.items],
        })
