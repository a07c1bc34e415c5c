"""The whole image-to-image job: validate, encode and place the image, queue, wait, download.

Shared by the ComfyUI node and the command line. A batch runs its items concurrently, a bounded
number at a time; item i gets ``seed + i`` so a batch is not B copies of one picture.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np

from . import schema
from .client import FalClient
from .files import fetch_image
from .images import encode, sniff_mime
from .queue import OnUpdate, ShouldCancel, Update
from .schema import Img2ImgOutput
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
    """Validate ``params`` (every schema field except ``image_url``) before anything is sent."""
    payload = dict(params)
    if isinstance(image, str):
        payload["image_url"] = image
    elif image is not None:
        payload["image_url"] = "<image>"  # placed later; only its presence is checked here
    return schema.validate(payload)


async def place_image(client: FalClient, image: ImageInput, *, image_format: str = "png",
                      image_mode: str = "auto") -> str:
    """A URL fal can read ``image`` from: as given for a URL, else a data URI or an upload."""
    if isinstance(image, str):
        return image
    if isinstance(image, np.ndarray):
        data, mime = await asyncio.to_thread(encode, image, image_format)
    else:
        data, mime = bytes(image), sniff_mime(image) or "application/octet-stream"
    return await client.storage.image_url(data, mime, mode=image_mode)


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
    **submit_options: Any,
) -> Img2ImgResult:
    """Run one image-to-image request; ``params`` holds every field except ``image_url``.

    ``image_mode`` is "auto" (inline small images, upload large ones), "data_uri" or "upload".
    Raises InputError before any network call when ``params`` are invalid.
    """
    payload = check_params(params, image)
    started = time.monotonic()
    notify = on_update or (lambda update: None)
    if not isinstance(image, str):
        notify(Update(None, "uploading", elapsed=time.monotonic() - started))
    payload["image_url"] = await place_image(client, image, image_format=image_format, image_mode=image_mode)
    notify(Update(None, "submitting", elapsed=time.monotonic() - started))
    remaining = None if timeout is None else max(timeout - (time.monotonic() - started), 0.001)
    completion = await client.queue.subscribe(
        app_id, payload, on_update=on_update, timeout=remaining, should_cancel=should_cancel, **submit_options)
    output = Img2ImgOutput.from_json(completion.output, completion.handle.request_id)
    images: list[np.ndarray] = []
    if decode:
        notify(Update(completion.handle.request_id, "downloading", elapsed=time.monotonic() - started))
        images = list(await asyncio.gather(*(
            fetch_image(client.transport, item.url, what=f"result image {i + 1} of request {completion.handle.request_id}")
            for i, item in enumerate(output.images))))
    return Img2ImgResult(completion.handle, completion.status, output, completion.output, images)


def seed_for_item(seed: int | None, index: int) -> int | None:
    """Item ``index`` of a batch uses ``seed + index`` (wrapping inside fal's seed range)."""
    return None if seed is None else (seed + index) % (schema.SEED_MAX + 1)


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
    items = [dict(params, seed=seed_for_item(params.get("seed"), i)) for i in range(len(images))]
    for item, image in zip(items, images):
        check_params(item, image)
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

