"""The whole image-to-image job: validate, encode and place the image, queue, wait, download.

Shared by the ComfyUI node and the command line. A batch runs its items concurrently, a bounded
number at a time; item i gets ``seed + i`` so a batch is not B copies of one picture.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np

from . import schema
from .client import FalClient
from .deadline import LATE_GRACE, Deadline
from .files import fetch_image
from .images import encode, image_dimensions, sniff_mime
from .journal import Journal, ResultFiles, fingerprint
from .journaled import JournaledRequest
from .phase import Phase
from .queue import OnUpdate, Update
from .schema import SD3, Endpoint, Img2ImgOutput
from .status import AppId, RequestHandle, Status

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


def check_params(params: Mapping[str, Any], image: ImageInput | None, endpoint: Endpoint = SD3) -> dict[str, Any]:
    """Validate ``params`` (every field of ``endpoint`` except ``image_url``) before anything is
    sent; without an image_size, a picture given as pixels or bytes must have a size SD3 can make."""
    payload = dict(params)
    if isinstance(image, str):
        payload["image_url"] = image
    return endpoint.validate(payload, input_size=_size_of(image),
                             picture_given=image is not None and not isinstance(image, str))


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
    endpoint: Endpoint = SD3,
    image_format: str = "png",
    image_mode: str = "auto",
    on_update: OnUpdate | None = None,
    timeout: float | None = None,
    decode: bool = True,
    journal: Journal | None = None,
    result_files: ResultFiles | None = None,
    force_new: bool = False,
    cost: Mapping[str, Any] | None = None,
) -> Img2ImgResult:
    """Run one request to ``endpoint``; ``params`` holds every field of it except ``image_url``.

    ``image_mode`` is "auto" (inline small images, upload large ones), "data_uri" or "upload".
    Raises InputError before any network call when ``params`` are invalid.

    With a ``journal``, the job is written down before it is sent (see fal_core.journaled):
    the same job (same fields, seed and picture) reattaches to a request still running, reuses
    a completed one or resolves a lost submit through fal's request history instead of paying
    again, unless ``force_new``. ``result_files`` keeps downloaded results (default: the
    journal's results folder). ``timeout`` bounds the whole job: upload, queue, result and
    downloads. ``cost`` (``{"amount", "currency", "source"}``) is journaled when fal accepts the
    submit (or a lost submit is found in fal's history), for the spend totals; a reused or
    reattached request adds none.
    """
    app_id = endpoint.app_id
    AppId.parse(app_id)  # a bad id is bad input: refused before anything is journaled or sent
    fields = check_params(params, image, endpoint)
    fields.pop("image_url", None)  # a URL given is sent as it was given
    deadline = Deadline(timeout)
    notify = on_update or (lambda update: None)
    preconnect(client, fields, decode=decode)
    encoded = await encode_image(image, image_format)
    fp = fingerprint(app_id, fields, encoded[0] if encoded is not None else str(image))  # None: a URL

    async def make_payload() -> dict:
        if encoded is None:
            return {**fields, "image_url": image}
        notify(Update(None, Phase.UPLOADING, elapsed=deadline.elapsed()))
        url = await deadline.bound(client.storage.image_url(*encoded, mode=image_mode),
                                   "upload of the input picture", "Nothing was sent to fal. ")
        return {**fields, "image_url": url}

    # The journal decides: reuse a completed request, reattach to a running one, or send anew.
    request = JournaledRequest(client, journal, fp, app_id, deadline=deadline, on_update=on_update, cost=cost)
    completion = await request.run(fields, make_payload, force_new=force_new)
    request_id = completion.handle.request_id
    output = endpoint.read_output(completion.output, request_id, max_images=fields.get("num_images") or 1)
    images: list[np.ndarray] = []
    if decode:
        notify(Update(request_id, Phase.DOWNLOADING, elapsed=deadline.elapsed()))
        store = result_files if result_files is not None else journal.results if journal is not None else None
        images = await _download(client, output, request_id, deadline, store, kept_in_journal=journal is not None)
    return Img2ImgResult(completion.handle, completion.status, output, completion.output, images)


async def _download(client: FalClient, output: Img2ImgOutput, request_id: str, deadline: Deadline,
                    store: ResultFiles | None, *, kept_in_journal: bool) -> list[np.ndarray]:
    """The result's pictures, decoded, in fal's order: past the deadline, a paid result still gets
    LATE_GRACE to arrive."""
    kept = "Its result is kept in the journal: a re-run downloads it again without paying. " if kept_in_journal else ""
    return list(await deadline.or_grace(LATE_GRACE).bound(asyncio.gather(*(
        fetch_image(client.transport, item.url, store=store, what=f"result image {i + 1} of request {request_id}")
        for i, item in enumerate(output.images))), f"download of the results of request {request_id}", kept))


def preconnect(client: FalClient, fields: Mapping[str, Any], count: int = 1, *, decode: bool = True) -> None:
    """Open the connections ``count`` jobs will need, unless the pool has them idle: the queue
    host's while the picture is encoded, the CDN's while the job runs (results are downloaded
    from there). Each costs a TCP and a TLS round trip that then overlaps other work."""
    client.transport.preconnect(client.config.queue_url, count)
    if decode and not fields.get("sync_mode"):
        client.transport.preconnect(client.config.cdn_url, count * (fields.get("num_images") or 1))


async def img2img_batch(
    client: FalClient,
    images: Sequence[ImageInput],
    params: Mapping[str, Any],
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    on_update: Callable[[int, Update], None] | None = None,
    endpoint: Endpoint = SD3,
    **options: Any,
) -> list[Img2ImgResult]:
    """Run one request per image, ``concurrency`` at a time; results keep the input order.
    ``options`` are :func:`img2img`'s keyword arguments, for every item.

    Every item is validated before the first is sent. When one item fails, the others are
    cancelled (at fal too) and the first failure is raised.
    """
    items = [dict(params, seed=schema.seed_for_item(params.get("seed"), i)) for i in range(len(images))]
    for item, image in zip(items, images, strict=True):
        check_params(item, image, endpoint)
    # Every concurrent item at once: each item's own call then finds its connection opening.
    preconnect(client, params, min(len(images), max(1, concurrency)), decode=options.get("decode", True))
    limit = asyncio.Semaphore(max(1, concurrency))

    async def run(index: int) -> Img2ImgResult:
        async with limit:
            report = None if on_update is None else (lambda update: on_update(index, update))
            return await img2img(client, images[index], items[index], endpoint=endpoint, on_update=report, **options)

    tasks = [asyncio.ensure_future(run(i)) for i in range(len(images))]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

