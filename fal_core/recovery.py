"""A paid result, recovered by its request id (or the journal's newest), never paid again.

The journal answers first: a completed request's result is there, and its files beside it. A
request the journal does not hold as completed is asked of fal's queue (by its id alone, if it was
made elsewhere), which keeps results for a while (1 h, 6 min for big ones). Nothing here submits
or cancels anything: a request still running is reported, not waited for, so pressing Cancel
while recovering can never cancel a paid job.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import schema
from .client import FalClient
from .errors import AppError, FieldError, InputError, JobError
from .files import fetch_image
from .journal import COMPLETED, PENDING, Entry, Journal, ResultFiles
from .schema import Img2ImgOutput

_REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


@dataclass(frozen=True)
class Recovered:
    request_id: str
    raw: Any
    output: Img2ImgOutput
    images: list[np.ndarray]
    from_journal: bool
    """True when the result came from the journal, with no call to fal's queue."""


def newest(journal: Journal, app_id: str = schema.ENDPOINT) -> Entry | None:
    """The journal's newest request of ``app_id`` that fal accepted (it has an id)."""
    return next((e for e in journal.entries() if e.request_id and e.app_id == app_id
                 and e.state in (COMPLETED, PENDING)), None)


def _which(journal: Journal, request_id: str, app_id: str) -> tuple[str, Entry | None]:
    request_id = request_id.strip()
    if not request_id:
        entry = newest(journal, app_id)
        if entry is None or entry.request_id is None:
            raise InputError([FieldError("request_id", "", f"is empty and the journal {journal.path} holds no "
                                         f"request of {app_id} from the last 24 h: paste a request id")])
        return entry.request_id, entry
    if not _REQUEST_ID.match(request_id):
        raise InputError([FieldError("request_id", request_id, "is not a fal request id (letters, digits, '-' "
                                     "and '_', as in the node's response output or fal's dashboard)")])
    return request_id, journal.find_request(request_id)


async def recover(client: FalClient, journal: Journal, request_id: str = "", *, app_id: str = schema.ENDPOINT,
                  result_files: ResultFiles | None = None) -> Recovered:
    """The result of ``request_id`` (empty: the journal's newest request of ``app_id``), decoded."""
    request_id, entry = _which(journal, request_id, app_id)
    if entry is not None and entry.state == COMPLETED and entry.result is not None:
        from_journal, raw = True, entry.result
    else:
        handle = entry.handle if entry is not None and entry.handle is not None else \
            client.queue.handle(app_id, request_id)
        status = await client.queue.status(handle, logs=False)
        if not status.completed:
            where = f" at position {status.queue_position}" if status.queue_position is not None else ""
            raise JobError(f"Request {request_id} is still {status.state.replace('_', ' ').lower()}{where} at "
                               "fal; run this node again once it has finished (it is paid already, nothing is "
                               "sent again).", request_id=request_id)
        if status.error:
            raise AppError(f"Request {request_id} failed at fal: {status.error}", request_id=request_id,
                           error=status.error, error_type=status.error_type)
        from_journal, raw = False, await client.queue.result(handle)
        if entry is not None:
            # Kept, so the next recovery (or an identical run) needs no call to fal.
            journal.completed(entry.fingerprint, request_id, raw)
    output = Img2ImgOutput.from_json(raw, request_id)
    images = list(await asyncio.gather(*(
        fetch_image(client.transport, item.url, store=result_files,
                    what=f"result image {i + 1} of request {request_id}")
        for i, item in enumerate(output.images))))
    return Recovered(request_id, raw, output, images, from_journal)
