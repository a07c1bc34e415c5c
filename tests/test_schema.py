import pytest

from comfyui_fal_sd3.fal_core import schema
from comfyui_fal_sd3.fal_core.errors import InputError, ResponseError


def test_valid_payload_is_returned_clean_with_floats_and_size_json():
    clean = schema.validate({"image_url": "https://x/y.png", "prompt": "a cat", "guidance_scale": 7,
                             "image_size": "640x480", "seed": None})
    assert clean == {"image_url": "https://x/y.png", "prompt": "a cat", "guidance_scale": 7.0,
                     "image_size": {"width": 640, "height": 480}}
    assert isinstance(clean["guidance_scale"], float)


def test_every_problem_is_reported_at_once_with_field_value_and_remedy():
    with pytest.raises(InputError) as info:
        schema.validate({"prompt": " ", "num_inference_steps": 80, "strength": 0.0, "num_images": True,
                         "guidance_scale": float("nan"), "image_size": "huge", "colour": "red"})
    fields = [e.field for e in info.value.errors]
    assert fields == ["prompt", "num_inference_steps", "strength", "num_images", "guidance_scale",
                      "image_size", "colour", "image_url"]
    text = str(info.value)
    assert "num_inference_steps=80: must be between 1 and 50" in text
    assert "strength=0.0: must be between 0.01 and 1" in text
    assert "num_images=True: must be a whole number" in text
    assert "square_hd" in text  # the remedy lists the presets
    assert "image_url=None: is required" in text
    assert "nothing was sent to fal" in text


def test_custom_size_limits_and_presets():
    assert schema.ImageSize.parse("landscape_16_9").dimensions == (1024, 576)
    assert schema.ImageSize.parse({"width": 512, "height": 768}).to_json() == {"width": 512, "height": 768}
    with pytest.raises(InputError) as info:
        schema.validate({"image_url": "https://x.example/u.png", "prompt": "p",
                         "image_size": {"width": 32, "height": 4000}})
    assert [e.field for e in info.value.errors] == ["image_size.width", "image_size.height"]


def test_seed_range_message_is_readable():
    with pytest.raises(InputError) as info:
        schema.validate({"image_url": "https://x.example/u.png", "prompt": "p", "seed": -1})
    assert "between 0 and 4294967295" in str(info.value)


def test_output_tolerates_extra_fields_and_rejects_missing_images():
    out = schema.Img2ImgOutput.from_json({
        "images": [{"url": "https://cdn/a.png", "width": 8, "height": 8, "content_type": "image/png"}],
        "seed": 5, "has_nsfw_concepts": [False], "prompt": "p", "num_images": 1,
        "timings": {"inference": 0.5}, "new_field": 1})
    assert out.images[0].width == 8 and out.seed == 5 and out.extra == {"new_field": 1}
    with pytest.raises(ResponseError, match="request r1"):
        schema.Img2ImgOutput.from_json({"detail": "oops"}, request_id="r1")
