import io

import numpy as np
import pytest
from PIL import Image

from comfyui_fal_sd3.fal_core import images
from comfyui_fal_sd3.fal_core.errors import FileError


def photo_like(h=96, w=128, channels=3, seed=0):
    """Smooth gradients plus texture: the statistics of a picture, not of noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 / w), (y * 255 / h), ((x + y) * 127 / (w + h))], axis=-1)
    img = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    if channels == 4:
        img = np.concatenate([img, (x * 255 // w).astype(np.uint8)[..., None]], axis=-1)
    return img


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png_round_trip_is_exact_through_pillow(channels):
    arr = photo_like(channels=max(channels, 3))[:, :, :channels] if channels != 4 else photo_like(channels=4)
    data = images.encode_png(arr)
    decoded = np.asarray(Image.open(io.BytesIO(data)))
    assert np.array_equal(decoded.reshape(arr.shape), arr)


def test_png_is_not_larger_than_pillows_default():
    arr = photo_like(256, 256)
    ours = images.encode_png(arr)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    assert len(ours) <= 1.2 * len(buf.getvalue())


def test_data_uri_round_trip_and_decode():
    arr = photo_like()
    data, mime = images.encode(arr, "png")
    uri = images.to_data_uri(data, mime)
    parsed = images.parse_data_uri(uri)
    assert parsed.mime == "image/png" and parsed.data == data
    assert np.array_equal(images.decode_image(parsed.data), arr)


def test_jpeg_refuses_alpha_and_encodes_rgb():
    with pytest.raises(ValueError, match="no alpha"):
        images.encode_jpeg(photo_like(channels=4))
    data = images.encode_jpeg(photo_like())
    assert images.sniff_mime(data) == "image/jpeg"
    assert np.abs(images.decode_image(data).astype(int) - photo_like()).mean() < 6


def test_decompression_bomb_is_refused_before_decoding():
    # A valid PNG claiming 4000x4000 pixels in a few kilobytes.
    big = Image.new("L", (4000, 4000))
    buf = io.BytesIO()
    big.save(buf, "PNG")
    with pytest.raises(FileError, match="over the limit"):
        images.decode_image(buf.getvalue(), max_pixels=10_000_000)


def test_corrupt_and_truncated_data_give_clear_errors():
    data = images.encode_png(photo_like())
    with pytest.raises(FileError, match="corrupt, truncated or not an image"):
        images.decode_image(data[: len(data) // 2])
    with pytest.raises(FileError, match="not valid base64"):
        images.parse_data_uri("data:image/png;base64,@@@@")
    with pytest.raises(FileError, match="limit"):
        images.parse_data_uri("data:image/png;base64," + "A" * 4000, max_bytes=1000)


def test_grey_palette_and_16bit_inputs_become_rgb():
    grey16 = Image.fromarray((np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16))
    buf = io.BytesIO()
    grey16.save(buf, "PNG")
    out = images.decode_image(buf.getvalue())
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8 and out.max() > 200
    pal = Image.new("P", (4, 4))
    buf = io.BytesIO()
    pal.save(buf, "PNG", transparency=0)
    assert images.decode_image(buf.getvalue()).shape == (4, 4, 4)
