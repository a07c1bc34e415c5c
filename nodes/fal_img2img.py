"""SD3 Img2Img (fal): the whole fal endpoint as one node.

The node converts tensors and reports progress; fal_core does the work. Each picture of an input
batch is one fal request (``num_images`` results each), run concurrently, seed + i for item i.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from typing import TYPE_CHECKING

from ..fal_core.schema import SD3
from . import comfy
from .inputs import schema_input
from .size_preset import IMAGE_SIZE_TYPE
from .status_view import EVENT, STEPS, RunStatus
from .tensors import from_uint8, to_uint8

if TYPE_CHECKING:
    from ..fal_core.queue import Update

log = logging.getLogger("fal_sd3")


def split_urls(text: str) -> list[str]:
    """One URL per line (the fal Upload Image node writes a batch that way)."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def summarize(results: list) -> str:
    """fal's answers as JSON for the ``response`` output; inline images are elided, not copied."""
    return summarize_answers([(r.handle.request_id, r.raw) for r in results])


def summarize_answers(answers: list[tuple[str, Any]]) -> str:
    """``(request id, fal's answer)`` pairs as the ``response`` output shows them."""
    def shrink(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("data:") and len(value) > 120:
            return f"{value[:value.find(',') + 1]}<{len(value):,} characters>"
        if isinstance(value, dict):
            return {k: shrink(v) for k, v in value.items()}
        if isinstance(value, list):
            return [shrink(v) for v in value]
        return value
    from ..fal_core.redaction import redact

    # fal's answers may echo the key: the output is redacted like every other text that leaves.
    return redact(json.dumps([{"request_id": rid, **shrink(raw)} for rid, raw in answers], indent=2))


class FalSD3Img2Img:
    DESCRIPTION = (
        "Stable Diffusion 3 (medium) image-to-image on fal.ai. Connect an IMAGE or an image_url. "
        "Each picture of a batch is one fal request; Cancel stops them at fal. The fal key comes "
        "from FAL_KEY or the pack's settings, never from the workflow."
    )
    CATEGORY = "fal/SD3"
    RETURN_TYPES = ("IMAGE", "INT", "BOOLEAN", "STRING")
    RETURN_NAMES = ("images", "seed", "has_nsfw_concepts", "response")
    OUTPUT_IS_LIST = (False, False, True, False)
    OUTPUT_TOOLTIPS = (
        "Every result, in input order (num_images per input picture).",
        "The seed fal used for the first picture (picture i used seed + i).",
        "One flag per result: fal's NSFW check (false when the checker is off).",
        "fal's answers as JSON, with request ids.",
    )
    FUNCTION = "run"
    # The fal endpoint the node runs: its app id, fields, answer and published price.
    FAL_ENDPOINT = SD3

    # Fields that are sockets, not widgets: the picture and SD3 Image Size's output.
    SOCKET_FIELDS = ("image_url", "image_size")
    # Where a widget differs from its field: the seed starts at 0, with ComfyUI's control after it.
    WIDGET_OPTIONS = {"seed": {"default": 0, "control_after_generate": True}}

    @classmethod
    def INPUT_TYPES(cls):
        fields = cls.FAL_ENDPOINT.fields
        return {
            # Every other field of the endpoint is a widget, in the endpoint's order.
            "required": {name: schema_input(name, fields, **cls.WIDGET_OPTIONS.get(name, {}))
                         for name in fields if name not in cls.SOCKET_FIELDS},
            "optional": {
                "image": ("IMAGE", {"tooltip": "The picture(s) to transform. Use this or image_url."}),
                "image_url": ("STRING", {"default": "", "forceInput": True,
                                         "tooltip": "URL(s) of the picture, one per line (from fal Upload Image). "
                                                    "Use this or image."}),
                "image_size": (IMAGE_SIZE_TYPE,
                               {"tooltip": "From SD3 Image Size; unconnected keeps the input's size."}),
                "image_format": (["png", "jpeg"], {
                    "default": "png", "tooltip": "How an IMAGE is sent: png is lossless, jpeg (q95) much smaller."}),
                "timeout": ("INT", {"default": 600, "min": 0, "max": 86400, "step": 10,
                                    "tooltip": "Seconds before the requests are cancelled at fal (0: no limit)."}),
                "force_new_request": ("BOOLEAN", {"default": False, "tooltip": (
                    "Off: the same request (same picture, fields and seed) reattaches to one still "
                    "running or reuses one completed in the last 24 h instead of paying again. "
                    "On: always send a new, paid request.")}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    async def run(self, image=None, image_url="", image_size=None, image_format="png", timeout=600,
                  force_new_request=False, unique_id=None, **fields):
        """``fields``: the endpoint's widgets (see INPUT_TYPES), checked by its schema like any value."""
        # Imported here, not at the top: ComfyUI imports every pack at start-up, and httpx and
        # the codecs are only needed once a fal node runs.
        from ..fal_core.img2img import DEFAULT_CONCURRENCY, img2img_batch, preconnect
        from . import session
        from .session import client, engine, journal, result_files

        num_images, seed = fields.get("num_images") or 1, fields.get("seed")
        # The first event replaces what the node showed for its previous run, errors included.
        status = RunStatus(unique_id, num_images=num_images)
        try:
            sources = self._sources(image, image_url)
        except ValueError as exc:
            status.finish("failed", str(exc))
            comfy.send_event(EVENT, status.event())
            raise
        status.expect(len(sources))
        # Checked by the schema like any value: a wrong type is a clear error, not an AttributeError.
        params = fields if image_size is None else {**fields, "image_size": image_size}
        # The first connections open now, while the journal is read and the pictures encoded. A
        # configuration that cannot give a client fails the run below, where it is reported.
        with contextlib.suppress(Exception):
            engine().soon(preconnect, client(), params, min(len(sources), DEFAULT_CONCURRENCY))
        bar = comfy.Progress(len(sources) * STEPS, unique_id)
        interrupted = False

        def show() -> None:
            nonlocal interrupted
            try:
                bar.update(status.progress())
            except Exception as exc:
                # ComfyUI's progress hook raises on Cancel, and clears the flag as it does.
                if not comfy.is_interrupt(exc):
                    raise
                interrupted = True
            comfy.send_event(EVENT, status.event())

        def on_update(index: int, update: Update) -> None:
            status.apply(index, update)
            show()

        show()
        book = journal()
        downloads = result_files(book)
        # The price as known now (never a network wait): the server refreshes it (see routes).
        price = session.price_cache().current(self.FAL_ENDPOINT)
        cost = {"amount": round(price.cost(num_images), 6), "currency": price.currency, "source": price.source}
        status.cost = cost
        try:
            fal, background = client(), engine()
            # Pruned here rather than at start-up: the pack's import must stay free of disk work.
            await asyncio.to_thread(lambda: (book.prune(), downloads.prune(),
                                             session.check_budget(book, cost["amount"] * len(sources), price.currency)))
            # The requests run on the pack's own loop: its connections outlive this prompt's loop.
            # Updates come back to this loop, where ComfyUI's progress and events are sent.
            batch = asyncio.ensure_future(background.call(
                img2img_batch, fal, sources, params, endpoint=self.FAL_ENDPOINT, concurrency=DEFAULT_CONCURRENCY,
                on_update=background.relay(on_update), image_format=image_format, timeout=timeout or None,
                journal=book, result_files=downloads, force_new=force_new_request, cost=cost))
            if not await comfy.run_unless_interrupted(batch, lambda: interrupted):
                status.finish("cancelled")
                show()
                raise comfy.interrupt_exception()
            results = batch.result()
            outputs = self._outputs(results, seed)
        except Exception as exc:
            # Every way out ends the status the front end draws, not only fal's own errors.
            if not status.finished:
                status.finish("failed", str(exc))
                show()
            raise
        flagged = [i for i, flag in enumerate(outputs[2]) if flag]
        if flagged:
            status.warning = (f"fal flagged image {', '.join(str(i) for i in flagged)} as NSFW; "
                              "returned as fal sent it")
            log.warning("SD3 Img2Img (fal): %s", status.warning)
        status.finish("done")
        show()
        return outputs

    @staticmethod
    def _sources(image, image_url: str) -> list:
        urls = split_urls(image_url or "")
        if image is not None and urls:
            raise ValueError("SD3 Img2Img (fal): both image and image_url are connected; "
                             "connect only one of them (image for a picture, image_url for a URL).")
        if image is None and not urls:
            raise ValueError("SD3 Img2Img (fal): no picture to transform; connect image (an IMAGE such "
                             "as Load Image) or image_url (a URL, for example from fal Upload Image).")
        return to_uint8(image) if image is not None else urls

    @staticmethod
    def _outputs(results: list, seed: int):
        arrays, flags = [], []
        for result in results:
            arrays.extend(result.images)
            fal_flags = result.output.has_nsfw_concepts
            flags.extend(bool(fal_flags[i]) if i < len(fal_flags) else False for i in range(len(result.images)))
        first_seed = results[0].output.seed if results[0].output.seed is not None else seed
        return (from_uint8(arrays), int(first_seed), flags, summarize(results))
