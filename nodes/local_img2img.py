"""SD3 Img2Img (local diffusers): the fal node's job on the user's own GPU.

Inputs carry the fal node's names, defaults and ranges (from fal_core's schema), so a graph
switches between remote and local by swapping one node. What only fal does (prompt expansion,
the NSFW checker) is absent here rather than imitated.
"""

from __future__ import annotations

from typing import Any

import torch

from ..fal_core import schema
from . import comfy
from .inputs import schema_input
from .size_preset import IMAGE_SIZE_TYPE
from .tensors import fit, multiple_of_16

# local_models and local_pipeline are imported when the node is listed or runs, not when ComfyUI
# imports the pack at start-up: most users of the pack never run the local node.


def target_size(images: torch.Tensor, image_size: schema.ImageSize | None) -> tuple[int, int]:
    """(width, height) of the output: the Size node's choice, else the input's; multiples of 16."""
    if image_size is not None:
        width, height = image_size.dimensions
    else:
        height, width = images.shape[1], images.shape[2]
    return multiple_of_16(width), multiple_of_16(height)


class DiffusersSD3Img2Img:
    DESCRIPTION = (
        "Stable Diffusion 3 image-to-image on this machine with diffusers, offline. Same inputs as "
        "SD3 Img2Img (fal). Needs SD3 weights in models/diffusers or models/checkpoints, and the "
        "pack's [local] extra (diffusers, transformers). No NSFW check runs here."
    )
    CATEGORY = "fal/SD3"
    RETURN_TYPES = ("IMAGE", "INT")
    RETURN_NAMES = ("images", "seed")
    OUTPUT_TOOLTIPS = (
        "Every result, in input order (num_images per input picture).",
        "The seed of the first picture (picture i used seed + i).",
    )
    FUNCTION = "run"
    # The fal node's fields this node has, in its widget order: what only fal does is absent.
    FIELDS = ("prompt", "negative_prompt", "num_inference_steps", "seed", "guidance_scale", "num_images", "strength")
    WIDGET_OPTIONS = {"seed": {"default": 0, "control_after_generate": True}}

    def __init__(self) -> None:
        from .local_pipeline import PipelineCache

        self.cache = PipelineCache()

    @classmethod
    def INPUT_TYPES(cls):
        from .local_models import CUSTOM_PATH, NO_MODEL, choices, where_to_add
        from .local_pipeline import LoadOptions

        models = choices()
        return {
            "required": {
                "model": (models, {"tooltip": (
                    "SD3 diffusers folders in models/diffusers and SD3 checkpoints in models/checkpoints; "
                    f"'{CUSTOM_PATH}' uses model_path." + (
                        f" None found: {where_to_add()}." if models[0] == NO_MODEL else ""))}),
                "image": ("IMAGE", {"tooltip": "The picture(s) to transform; a batch runs picture by picture."}),
                **{name: schema_input(name, **cls.WIDGET_OPTIONS.get(name, {})) for name in cls.FIELDS},
            },
            "optional": {
                "image_size": (IMAGE_SIZE_TYPE, {"tooltip": (
                    "From SD3 Image Size; the input is scaled and center-cropped to it. Unconnected keeps the "
                    "input's size, rounded to a multiple of 16.")}),
                "model_path": ("STRING", {"default": "", "tooltip": (
                    "A diffusers folder or .safetensors checkpoint anywhere on disk; wins over model when set.")}),
                **LoadOptions.inputs(),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def run(self, model, image, image_size=None, model_path="", unique_id=None, **inputs):
        """``inputs``: the fields (FIELDS) and the load options (LoadOptions), by name."""
        from .local_models import resolve
        from .local_pipeline import LoadOptions, require_diffusers

        # First: without diffusers nothing else can help, whatever else is wrong.
        require_diffusers()
        # The fal node's checks, image_size and the picture's size included, before diffusers' own.
        params = schema.validate({
            **{name: inputs.get(name) for name in self.FIELDS}, "image_size": image_size,
        }, input_size=(image.shape[-2], image.shape[-3]) if image.ndim >= 3 else None, picture_given=True)
        if image_size is not None:
            image_size = schema.ImageSize.parse(params["image_size"])
        width, height = target_size(image, image_size)
        pixels = fit(image, width, height)
        source = resolve(model, model_path)
        pipe = self.cache.get(source, LoadOptions.of(inputs))
        with torch.inference_mode():
            results = self.generate(pipe, pixels, params, unique_id)
        return (torch.cat(results), params["seed"])

    def generate(self, pipe, pixels: torch.Tensor, params: dict[str, Any], node_id: str | None) -> list[torch.Tensor]:
        """Run every picture of the batch, seed + i for picture i, with progress and interrupt per step."""
        from .local_memory import DENOISING
        from .local_prompt import repeated

        count = pixels.shape[0]
        bar = comfy.Progress(count * params["num_inference_steps"], node_id)
        # Encoded once for the whole batch, and kept for the next run with the same prompt.
        embeddings = repeated(self.cache.embeddings(params["prompt"], params["negative_prompt"],
                                                    params["guidance_scale"] > 1), params["num_images"])
        self.cache.ready(DENOISING)
        # The VAE encodes the picture in its own dtype, on its own device.
        pixels = pixels.to(pipe.vae.device, pipe.vae.dtype)
        results = []
        for index in range(count):
            if comfy.interrupted():
                raise comfy.interrupt_exception()
            item_seed = schema.seed_for_item(params["seed"], index)
            results.append(self._one(pipe, pixels[index:index + 1], params, embeddings, item_seed,
                                     lambda step, steps, i=index: self._step(bar, i, count, step, steps)))
        return results

    @staticmethod
    def _one(pipe, pixels, params, embeddings, seed, on_step) -> torch.Tensor:
        def callback(pipeline, step, timestep, tensors):
            on_step(step + 1, pipeline.num_timesteps)
            return tensors

        out = pipe(
            image=pixels, height=pixels.shape[-2], width=pixels.shape[-1], strength=params["strength"],
            num_inference_steps=params["num_inference_steps"], guidance_scale=params["guidance_scale"],
            # The embeddings already hold num_images rows, so the pipeline makes one image per row.
            num_images_per_prompt=1,
            # A CPU generator gives the same noise whatever device runs the model.
            generator=torch.Generator("cpu").manual_seed(seed), output_type="pt",
            callback_on_step_end=callback, **embeddings,
        ).images
        return out.permute(0, 2, 3, 1).to("cpu", torch.float32).clamp(0, 1)

    @staticmethod
    def _step(bar: comfy.Progress, index: int, count: int, step: int, steps: int) -> None:
        # ComfyUI's progress hook raises its interrupt exception itself; outside it (and as a
        # second guard) the flag is checked here. Raising from the step callback also skips the VAE
        # decode of half-denoised latents.
        bar.update(index * steps + step, count * steps)
        if comfy.interrupted():
            raise comfy.interrupt_exception()
