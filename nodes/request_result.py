"""fal Request Result: a paid result back in the graph, by request id or the journal's newest."""

from __future__ import annotations

from .fal_img2img import summarize_answers
from .tensors import from_uint8


class FalRequestResult:
    DESCRIPTION = (
        "Recover the images of a fal SD3 img2img request already paid for: paste its request id (from the "
        "SD3 Img2Img (fal) node's response output or status, fal's dashboard, or `python -m fal_core journal`), "
        "or leave it empty for the newest request in the pack's journal. A result the journal holds costs no "
        "call to fal; otherwise fal's queue is asked (it keeps results about an hour). Nothing is sent again, "
        "nothing is cancelled."
    )
    CATEGORY = "fal/SD3"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("images", "response")
    OUTPUT_TOOLTIPS = ("The request's images, in fal's order.", "fal's answer as JSON, with the request id.")
    FUNCTION = "fetch"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"request_id": ("STRING", {"default": "", "tooltip": (
            "The fal request id. Empty: the newest SD3 img2img request in the journal (the last 24 h).")})}}

    @classmethod
    def IS_CHANGED(cls, request_id=""):
        # A given id's result never changes; "the newest" does whenever a new request is journaled.
        if request_id.strip():
            return request_id.strip()
        from ..fal_core.recovery import newest
        from .session import journal

        entry = newest(journal())
        return entry.request_id if entry is not None else ""

    async def fetch(self, request_id=""):
        from ..fal_core.recovery import recover
        from .session import client, engine, journal, result_files

        book = journal()
        # On the pack's own loop and connections, like SD3 Img2Img (fal).
        found = await engine().call(recover, client(), book, request_id, result_files=result_files(book))
        return (from_uint8(found.images), summarize_answers([(found.request_id, found.raw)]))
