"""fal Upload Image: IMAGE -> fal storage URLs, one per picture, each picture uploaded once."""

from __future__ import annotations

import asyncio

from .tensors import to_uint8


class FalUploadImage:
    DESCRIPTION = (
        "Uploads pictures to fal storage and outputs their URLs, one per line (a batch of B gives "
        "B lines). The same pixels are uploaded only once. Feed the URLs to SD3 Img2Img (fal)'s "
        "image_url to reuse one upload across many runs."
    )
    CATEGORY = "fal/SD3"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("urls",)
    OUTPUT_TOOLTIPS = ("One fal storage URL per picture of the batch, one per line.",)
    FUNCTION = "upload"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The picture(s) to upload."}),
                "format": (["png", "jpeg"], {"default": "png",
                                             "tooltip": "png is lossless; jpeg (quality 95) is much smaller."}),
            }
        }

    async def upload(self, image, format="png"):
        # Imported on use: the pack's import at ComfyUI's start-up stays cheap.
        from ..fal_core.images import encode
        from .session import client, engine

        arrays = to_uint8(image)
        fal = client()

        async def upload_all():
            async def one(array):
                data, mime = await asyncio.to_thread(encode, array, format)
                return await fal.storage.upload(data, mime)
            return await asyncio.gather(*(one(a) for a in arrays))
        # On the pack's loop, like SD3 Img2Img (fal): the same connections and CDN token.
        urls = await engine().call(upload_all)
        return ("\n".join(urls),)
