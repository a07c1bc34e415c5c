"""Fetching what a result points at: CDN URLs or inline data URIs, size-capped and decoded."""

from __future__ import annotations

import asyncio

import numpy as np

from .images import MAX_BYTES, MAX_PIXELS, decode_image, parse_data_uri
from .transport import Transport


async def fetch_bytes(transport: Transport, url: str, *, what: str = "result file",
                      max_bytes: int = MAX_BYTES) -> tuple[bytes, str | None]:
    """The bytes and content type behind ``url`` (http(s) or data:)."""
    if url.startswith("data:"):
        parsed = parse_data_uri(url, max_bytes=max_bytes)
        return parsed.data, parsed.mime
    response = await transport.request("GET", url, what=what, max_bytes=max_bytes)
    return response.content, response.headers.get("content-type")


async def fetch_image(transport: Transport, url: str, *, what: str = "result image",
                      max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The decoded (H,W,C) uint8 image behind ``url``.

    Decoding runs in a worker thread: it is CPU work that would otherwise stall every other
    request on the event loop (Pillow releases the GIL, so several images decode in parallel).
    """
    data, _ = await fetch_bytes(transport, url, what=what, max_bytes=max_bytes)
    return await asyncio.to_thread(decode_image, data, max_pixels=max_pixels, source=what)
