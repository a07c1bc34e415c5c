"""Fetching what a result points at: CDN URLs or inline data URIs, size-capped and decoded."""

from __future__ import annotations

import asyncio

import numpy as np

from .errors import FileError
from .images import MAX_BYTES, decode_image, parse_data_uri, sniff_mime
from .journal import INLINE_FILE, ResultFiles
from .schema import MAX_RESULT_PIXELS
from .transport import Transport


async def fetch_bytes(transport: Transport, url: str, *, what: str = "result file", max_bytes: int = MAX_BYTES,
                      store: ResultFiles | None = None) -> tuple[bytes, str | None]:
    """The bytes and content type behind ``url`` (http(s) or data:); with a ``store``, a file
    downloaded before is read from it and a new download is kept in it."""
    if url.startswith(INLINE_FILE):
        # An inline result the journal moved to the results folder (fal_core.journal).
        kept = store.get(url) if store is not None else None
        if kept is None:
            raise FileError(f"The {what} was kept as {url}, which is no longer in the results folder "
                            f"{store.folder if store is not None else '(none given)'}; turn on force_new_request "
                            "(--force-new on the command line) to pay for it again.")
        url = kept.decode()
    if url.startswith("data:"):
        parsed = parse_data_uri(url, max_bytes=max_bytes)
        return parsed.data, parsed.mime
    kept = store.get(url) if store is not None else None
    if kept is not None:
        return kept, sniff_mime(kept)
    response = await transport.request("GET", url, what=what, max_bytes=max_bytes)
    if store is not None:
        store.put(url, response.content)
    return response.content, response.headers.get("content-type")


async def fetch_image(transport: Transport, url: str, *, what: str = "result image", max_bytes: int = MAX_BYTES,
                      max_pixels: int = MAX_RESULT_PIXELS, store: ResultFiles | None = None) -> np.ndarray:
    """The decoded (H,W,C) uint8 image behind ``url``; one over ``max_pixels`` (by default what
    SD3 can make) is refused from its header, before it is decoded.

    Decoding runs in a worker thread: it is CPU work that would otherwise stall every other
    request on the event loop (Pillow releases the GIL, so several images decode in parallel).
    """
    data, _ = await fetch_bytes(transport, url, what=what, max_bytes=max_bytes, store=store)
    return await asyncio.to_thread(decode_image, data, max_pixels=max_pixels, source=what)
