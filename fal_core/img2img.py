"""The whole image-to-image job: validate, encode and place the image, queue, wait, download.

Shared by the ComfyUI node and the command line. A batch runs its items concurrently, a bounded
number at a time; item i gets ``seed + i`` so a batch is not B copies of one picture.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, Sequence, Union

import numpy as np

from . import schema
from .client import FalClient
from .errors import (
    AppError, HTTPStatusError, RequestCancelled, RequestTimeout, SubmitUncertainError, ValidationError,
)
from .files import fetch_image
from .images import encode, image_dimensions, sniff_mime
from .journal import COMPLETED, PENDING, UNKNOWN, Journal, ResultFiles, fingerprint
from .queue import Completion, OnUpdate, ShouldCancel, Update
from .schema import Img2ImgOutput
from .status import COMPLETED as COMPLETED_STATE
from .status import RequestHandle, Status

# An image is an (H,W,C) uint8 array, encoded bytes, or a URL fal can read (http(s) or data:).
ImageInput = Union[np.ndarray, bytes, str]
DEFAULT_CONCURRENCY = 4


@dataclass(frozen=True)
class Img2ImgResult:
    handle: RequestHandle
    status: Status
    output: Img2ImgOutput
    raw: dict
    images: list[np.ndarray]
    """The decoded results, (H,W,C) uint8, in fal's order; empty when ``decode`` was off."""


def check_params(params: Mapping[str, Any], image: ImageInput | None) -> dict[str, Any]:
    """Validate ``params`` (every schema field except ``image_url``) before anything is sent;
    without an image_size, a picture given as pixels or bytes must have a size SD3 can make."""
    payload = dict(params)
    if isinstance(image, str):
        payload["image_url"] = image
    elif image is not None:
        payload["image_url"] = schema.IMAGE_GIVEN
    return schema.validate(payload, input_size=_size_of(image))


def _size_of(image: ImageInput | None) -> tuple[int, int] | None:
    """(width, height) of a picture given as pixels or bytes; None for a URL (fal fetches it)."""
    if isinstance(image, np.ndarray):
        return (image.shape[1], image.shape[0]) if image.ndim >= 2 else None
    if isinstance(image, (bytes, bytearray)):
        return image_dimensions(bytes(image))
    return None


async def encode_image(image: ImageInput, image_format: str = "png") -> tuple[bytes, str] | None:
    """The encoded bytes and MIME type of an array or bytes; None for a URL, sent as it is."""
    if isinstance(image, str):
        return None
    if isinstance(image, np.ndarray):
        return await asyncio.to_thread(encode, image, image_format)
    return bytes(image), sniff_mime(image) or "application/octet-stream"


async def img2img(
    client: FalClient,
    image: ImageInput,
    params: Mapping[str, Any],
    *,
    app_id: str = schema.ENDPOINT,
    image_format: str = "png",
    image_mode: str = "auto",
    on_update: OnUpdate | None = None,
    timeout: float | None = None,
    should_cancel: ShouldCancel | None = None,
    decode: bool = True,
    journal: Journal | None = None,
    result_files: ResultFiles | None = None,
    force_new: bool = False,
    cost: Mapping[str, Any] | None = None,
    **submit_options: Any,
) -> Img2ImgResult:
    """Run one image-to-image request; ``params`` holds every field except ``image_url``.

    ``image_mode`` is "auto" (inline small images, upload large ones), "data_uri" or "upload".
    Raises InputError before any network call when ``params`` are invalid.

    With a ``journal``, the job is written down before it is waited for: the same job (same
    fields, seed and picture) reattaches to a request still running or reuses a completed one
    instead of paying again, unless ``force_new``. ``result_files`` keeps downloaded results.
    ``cost`` (``{"amount", "currency", "source"}``) is journaled when fal accepts the submit, for
    the spend totals; a reused or reattached request adds none.
    """
    fields = check_params(params, image)
    fields.pop("image_url")
    started = time.monotonic()
    notify = on_update or (lambda update: None)
    preconnect(client, fields, decode=decode)
    encoded = await encode_image(image, image_format)
    fp = fingerprint(app_id, fields, encoded[0] if encoded else image)
    entry = journal.lookup(fp) if journal is not None and not force_new else None
    if entry is not None and entry.state == UNKNOWN:
        raise SubmitUncertainError(
            app_id, f"the same request was sent at {_clock(entry.time)} and its answer was lost; "
            "run it with force new request once you have checked", url=client.config.queue_url, fingerprint=fp)
    if entry is not None and entry.state == COMPLETED and entry.handle is not None:
        notify(Update(entry.request_id, "completed", elapsed=time.monotonic() - started))
        completion = Completion(entry.handle, Status(COMPLETED_STATE), entry.result)
    else:
        wait_options = dict(on_update=on_update, should_cancel=should_cancel,
                            timeout=None if timeout is None else max(timeout - (time.monotonic() - started), 0.001))
        completion = None
        if entry is not None and entry.state == PENDING and entry.handle is not None:
            completion = await _reattach(client, journal, fp, entry.handle, wait_options)
        if completion is None:
            if encoded is not None:
                notify(Update(None, "uploading", elapsed=time.monotonic() - started))
                url = await client.storage.image_url(*encoded, mode=image_mode)
            else:
                url = image
            payload = {**fields, "image_url": url}
            notify(Update(None, "submitting", elapsed=time.monotonic() - started))
            completion = await _journaled(journal, fp, app_id, payload, lambda on_submitted: client.queue.subscribe(
                app_id, payload, on_submitted=on_submitted, **wait_options, **submit_options), cost=cost)
    output = Img2ImgOutput.from_json(completion.output, completion.handle.request_id,
                                     max_images=fields.get("num_images") or 1)
    images: list[np.ndarray] = []
    if decode:
        notify(Update(completion.handle.request_id, "downloading", elapsed=time.monotonic() - started))
        images = list(await asyncio.gather(*(
            fetch_image(client.transport, item.url, store=result_files,
                        what=f"result image {i + 1} of request {completion.handle.request_id}")
            for i, item in enumerate(output.images))))
    return Img2ImgResult(completion.handle, completion.status, output, completion.output, images)


def preconnect(client: FalClient, fields: Mapping[str, Any], count: int = 1, *, decode: bool = True) -> None:
    """Open the connections ``count`` jobs will need, unless the pool has them idle: the queue
    host's while the picture is encoded, the CDN's while the job runs (results are downloaded
    from there). Each costs a TCP and a TLS round trip that then overlaps other work."""
    client.transport.preconnect(client.config.queue_url, count)
    if decode and not fields.get("sync_mode"):
        client.transport.preconnect(client.config.cdn_url, count * (fields.get("num_images") or 1))


async def _reattach(client: FalClient, journal: Journal, fp: str, handle: RequestHandle,
                    wait_options: dict) -> Completion | None:
    """Follow a request an earlier run submitted; None when fal no longer knows it."""
    try:
        return await _journaled(journal, fp, handle.app_id, None, lambda _: client.queue.complete(handle, **wait_options),
                                handle=handle)
    except HTTPStatusError as exc:
        if exc.status_code != 404:
            raise
        journal.failed(fp, handle.request_id, "fal no longer knows this request")
        return None


async def _journaled(journal: Journal | None, fp: str, app_id: str, payload: Mapping[str, Any] | None,
                     run: Callable[[Callable[[RequestHandle], None]], Awaitable[Completion]],
                     handle: RequestHandle | None = None, cost: Mapping[str, Any] | None = None) -> Completion:
    """Run a request with its life written to the journal: submitted, then how it ended."""
    submitted: list[RequestHandle] = [handle] if handle is not None else []

    def on_submitted(new: RequestHandle) -> None:
        submitted.append(new)
        if journal is not None:
            journal.submitted(fp, new, payload or {}, cost=cost)

    def request_id() -> str | None:
        return submitted[-1].request_id if submitted else None

    if journal is None:
        return await run(on_submitted)
    try:
        completion = await run(on_submitted)
    except SubmitUncertainError as exc:
        journal.unknown(fp, app_id, payload or {}, str(exc))
        raise
    except (RequestCancelled, RequestTimeout, asyncio.CancelledError):
        if submitted:
            journal.cancelled(fp, request_id())
        raise
    except (AppError, ValidationError) as exc:
        journal.failed(fp, request_id(), str(exc))
        raise
    journal.completed(fp, completion.handle.request_id, completion.output)
    return completion


def _clock(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


async def img2img_batch(
    client: FalClient,
    images: Sequence[ImageInput],
    params: Mapping[str, Any],
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    on_update: Callable[[int, Update], None] | None = None,
    **options: Any,
) -> list[Img2ImgResult]:
    """Run one request per image, ``concurrency`` at a time; results keep the input order.

    Every item is validated before the first is sent. When one item fails, the others are
    cancelled (at fal too) and the first failure is raised.
    """
    items = [dict(params, seed=schema.seed_for_item(params.get("seed"), i)) for i in range(len(images))]
    for item, image in zip(items, images):
        check_params(item, image)
    # Every concurrent item at once: each item's own call then finds its connection opening.
    preconnect(client, params, min(len(images), max(1, concurrency)), decode=options.get("decode", True))
    limit = asyncio.Semaphore(max(1, concurrency))

    async def run(index: int) -> Img2ImgResult:
        async with limit:
            report = None if on_update is None else (lambda update: on_update(index, update))
            return await img2img(client, images[index], items[index], on_update=report, **options)

    tasks = [asyncio.ensure_future(run(i)) for i in range(len(images))]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

