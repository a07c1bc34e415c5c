"""An endpoint is one value: a second one, defined only here with its own fields and limits,
runs end to end on the emulator through the same img2img, journal and price cache as SD3's."""

import asyncio
from dataclasses import replace

import numpy as np
import pytest

from comfyui_fal_sd3.fal_core import FalClient, Journal, img2img, img2img_batch
from comfyui_fal_sd3.fal_core.errors import InputError
from comfyui_fal_sd3.fal_core.pricing import PriceCache
from comfyui_fal_sd3.fal_core.schema import Endpoint, Field, Img2ImgOutput
from fal_emulator import expected_output


def _parse(data, request_id, max_images):
    output = Img2ImgOutput.from_json(data, request_id, max_images)
    return replace(output, prompt=f"read by the test endpoint: {output.prompt}")


STYLIZE = Endpoint.of(
    "acme/stylize/image-to-image",
    (
        Field("image_url", str, None, "The picture.", required=True),
        Field("prompt", str, "", "What to show.", required=True),
        Field("style", str, "ink", "A style name, a field SD3 does not have."),
        Field("strength", float, 0.5, "How far to move.", minimum=0.3, maximum=0.7, step=0.05),
        Field("num_images", int, 1, "Pictures per request.", minimum=1, maximum=2, step=1),
        Field("seed", int, None, "The seed.", minimum=0, maximum=1000, step=1),
    ),
    output=_parse,
    published_price=(0.01, "image", "USD"),
    sides=(16, 512),
)


def picture(h=48, w=64):
    y, x = np.mgrid[0:h, 0:w]
    return (np.stack([x * 3, y * 5, x + y], axis=-1) % 256).astype(np.uint8)


def client(emu):
    return FalClient(key=emu.key, queue_url=emu.queue_url, rest_url=emu.rest_url, cdn_url=emu.cdn_url,
                     api_url=emu.api_url)


def test_a_second_endpoint_runs_end_to_end_and_reuses_its_journaled_result(fal_emulator, tmp_path):
    image = picture()
    book = Journal(tmp_path / "journal.jsonl")
    params = {"prompt": "a harbour", "style": "woodcut", "strength": 0.6, "num_images": 2, "seed": 9}

    async def main():
        async with client(fal_emulator) as fal:
            first = await img2img(fal, image, params, endpoint=STYLIZE, journal=book)
            again = await img2img(fal, image, params, endpoint=STYLIZE, journal=book)
            return first, again

    first, again = asyncio.run(main())
    for k, result in enumerate(first.images):
        assert np.array_equal(result, expected_output(image, k, None))
    assert first.output.prompt == "read by the test endpoint: a harbour"
    (submit,) = fal_emulator.calls("submit")  # the second run reused the first's result
    assert submit.path == "/queue/acme/stylize/image-to-image"
    assert {k: submit.json[k] for k in params} == params
    assert again.handle.request_id == first.handle.request_id
    assert [e.app_id for e in book.entries()] == ["acme/stylize/image-to-image"]


@pytest.mark.parametrize("params, problem", [
    ({"prompt": "p", "strength": 0.9}, "strength=0.9: must be between 0.3 and 0.7"),
    ({"prompt": "p", "num_images": 3}, "num_images=3: must be between 1 and 2"),
    ({"prompt": "p", "guidance_scale": 5.0}, "guidance_scale=5.0: is not a field of acme/stylize/image-to-image"),
])
def test_its_own_fields_and_limits_are_checked_before_anything_is_sent(fal_emulator, params, problem):
    async def main():
        async with client(fal_emulator) as fal:
            await img2img_batch(fal, [picture()], params, endpoint=STYLIZE)

    with pytest.raises(InputError) as refused:
        asyncio.run(main())
    assert problem in str(refused.value)
    assert fal_emulator.calls() == []


def test_its_published_price_stands_in_until_fal_gives_one(tmp_path):
    price = PriceCache(tmp_path / "prices.json").current(STYLIZE)
    assert (price.endpoint_id, price.unit_price, price.source) == ("acme/stylize/image-to-image", 0.01, "published")
    assert price.cost(2) == pytest.approx(0.02)


def test_its_own_side_limit_applies_to_an_input_without_image_size(fal_emulator):
    async def main():
        async with client(fal_emulator) as fal:
            await img2img(fal, picture(600, 64), {"prompt": "p"}, endpoint=STYLIZE)

    with pytest.raises(InputError, match="is 64x600 pixels .* but acme/stylize/image-to-image makes sides of 16 to"):
        asyncio.run(main())
    assert fal_emulator.calls() == []


def test_a_node_for_it_is_one_class_naming_the_endpoint(fal_env):
    import torch

    from comfyui_fal_sd3.nodes.fal_img2img import FalSD3Img2Img

    class StylizeImg2Img(FalSD3Img2Img):
        FAL_ENDPOINT = STYLIZE

    widgets = StylizeImg2Img.INPUT_TYPES()["required"]
    assert list(widgets) == ["prompt", "style", "strength", "num_images", "seed"]
    assert widgets["strength"] == ("FLOAT", {"tooltip": "How far to move.", "default": 0.5, "min": 0.3, "max": 0.7,
                                             "step": 0.05})
    image = picture()
    tensor = torch.from_numpy(image[None]).float() / 255.0
    images, seed, flags, _ = asyncio.run(StylizeImg2Img().run(
        image=tensor, prompt="a harbour", style="woodcut", strength=0.4, num_images=2, seed=3))
    assert images.shape == (2, 48, 64, 3) and seed == 3 and flags == [False, False]
    result = (images[1] * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(result, expected_output(image, 1, None))
    (submit,) = fal_env.calls("submit")
    assert submit.path == "/queue/acme/stylize/image-to-image" and submit.json["style"] == "woodcut"
