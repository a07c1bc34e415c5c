"""SD3 Image Size: one of fal's presets, a custom size, or the input's own size."""

from __future__ import annotations

from ..fal_core.schema import IMAGE_SIZE_PRESETS, MAX_SIDE, MIN_SIDE, ImageSize

MATCH_INPUT = "match input"
CUSTOM = "custom"
PRESET_CHOICES = [MATCH_INPUT, *IMAGE_SIZE_PRESETS, CUSTOM]

# What travels between nodes: an ImageSize, or None for "keep the input's size" (which is also
# what an unconnected image_size input means).
IMAGE_SIZE_TYPE = "FAL_IMAGE_SIZE"


def resolve(preset: str, width: int, height: int) -> ImageSize | None:
    if preset == MATCH_INPUT:
        return None
    if preset == CUSTOM:
        size = ImageSize(width=int(width), height=int(height))
        problems = size.problems()
        if problems:
            raise ValueError("; ".join(str(p) for p in problems))
        return size
    return ImageSize.parse(preset)


class FalSD3ImageSize:
    DESCRIPTION = (
        "The output size for SD3 Img2Img: one of fal's presets, a custom width x height, "
        "or 'match input' to keep the conditioning image's size."
    )
    CATEGORY = "fal/SD3"
    RETURN_TYPES = (IMAGE_SIZE_TYPE,)
    RETURN_NAMES = ("image_size",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        side = {"min": MIN_SIDE, "max": MAX_SIDE, "step": 16}
        return {
            "required": {
                "preset": (PRESET_CHOICES, {"default": MATCH_INPUT, "tooltip": (
                    "The size of fal's output: one of fal's presets (its pixel size shown beside "
                    "it), 'custom' for the width and height below, or 'match input' for the "
                    "picture's own size.")}),
                "width": ("INT", {"default": 1024, **side, "tooltip": "Used when preset is 'custom'."}),
                "height": ("INT", {"default": 1024, **side, "tooltip": "Used when preset is 'custom'."}),
            }
        }

    def build(self, preset: str, width: int, height: int):
        return (resolve(preset, width, height),)
