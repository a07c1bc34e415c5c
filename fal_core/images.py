"""uint8 image arrays to PNG/JPEG bytes and data URIs, and back, with guards for bad data.

PNG encoding is ours rather than Pillow's: Pillow tries five filters on every row and compresses
at zlib level 6, which costs ~165 ms for a 1024x1024 photo. The "Up" filter done in one numpy
subtraction, then zlib at level 2, takes ~30 ms and gives a smaller file on photographic images
(benchmarks/codec.py measures both). Any PNG reader decodes it.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
import warnings
import zlib
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

import numpy as np
from PIL import Image

from .errors import FieldError, FileError, InputError

PNG_LEVEL = 2
JPEG_QUALITY = 95
# Results and inputs larger than this are refused before decoding: 64 Mpx is 8192x8192, four
# times what SD3 can produce (MAX_SIDE in schema.py) and ~256 MB as RGBA.
MAX_PIXELS = 64 * 1024 * 1024
MAX_BYTES = 256 * 1024 * 1024

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (grey, grey+alpha, RGB, RGBA)
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


def extension(mime: str) -> str:
    """The file extension (no dot) a picture of type ``mime`` is saved and uploaded under."""
    return _EXTENSIONS.get(mime, "bin")


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _as_hwc(array: np.ndarray) -> np.ndarray:
    if array.dtype != np.uint8:
        raise InputError([FieldError("image", f"array of {array.dtype}",
                                     "expected dtype uint8; scale floats to 0..255 first")])
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in _COLOR_TYPES or 0 in array.shape:
        raise InputError([FieldError("image", f"array of shape {array.shape}",
                                     "expected (H, W) or (H, W, C) with C in 1..4")])
    return np.ascontiguousarray(array)


def encode_png(array: np.ndarray, level: int = PNG_LEVEL) -> bytes:
    """Lossless PNG of an (H,W[,C]) uint8 array, C = 1 (grey), 2, 3 (RGB) or 4 (RGBA)."""
    array = _as_hwc(array)
    height, width, channels = array.shape
    rows = array.reshape(height, width * channels)
    # Each row starts with its filter byte; "Up" (2) stores the difference to the row above,
    # which wraps modulo 256 exactly as the PNG specification defines.
    filtered = np.empty((height, width * channels + 1), np.uint8)
    filtered[:, 0] = 2
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOR_TYPES[channels], 0, 0, 0)
    return b"".join((
        _PNG_SIGNATURE,
        _chunk(b"IHDR", header),
        _chunk(b"IDAT", zlib.compress(filtered.data, level)),
        _chunk(b"IEND", b""),
    ))


def encode_jpeg(array: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG of an RGB or grey uint8 array. JPEG has no alpha: an RGBA array is refused."""
    array = _as_hwc(array)
    if array.shape[2] in (2, 4):
        raise InputError([FieldError("image_format", "jpeg",
                                     "JPEG has no alpha channel: drop it (array[..., :3]) or encode as PNG")])
    out = io.BytesIO()
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(out, "JPEG", quality=quality)
    return out.getvalue()


def encode(array: np.ndarray, fmt: str = "png", *, quality: int = JPEG_QUALITY) -> tuple[bytes, str]:
    """Bytes and MIME type of the array in ``fmt`` ("png" or "jpeg")."""
    if fmt == "png":
        return encode_png(array), "image/png"
    if fmt == "jpeg":
        return encode_jpeg(array, quality), "image/jpeg"
    raise InputError([FieldError("image_format", fmt, "use 'png' or 'jpeg'")])


def to_data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


@dataclass(frozen=True)
class DataURI:
    data: bytes
    mime: str


def parse_data_uri(uri: str, *, max_bytes: int = MAX_BYTES) -> DataURI:
    """Decode a ``data:`` URI; the size is checked before the base64 is decoded."""
    head, sep, body = uri.partition(",")
    if not head.startswith("data:") or not sep:
        raise FileError(f"Not a data URI (it starts {uri[:40]!r}); expected 'data:<type>;base64,<data>'.")
    params = head[5:].split(";")
    mime = params[0] or "text/plain"
    if len(body) * 3 // 4 > max_bytes:
        raise FileError(f"The data URI holds about {len(body) * 3 // 4 // 1_000_000} MB, over the "
                        f"{max_bytes // 1_000_000} MB limit.")
    if "base64" in params[1:]:
        try:
            data = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise FileError(f"The data URI ({mime}) is not valid base64: it is truncated or corrupt.") from None
    else:
        data = unquote_to_bytes(body)
    return DataURI(data, mime)


def sniff_mime(data: bytes) -> str | None:
    if data.startswith(_PNG_SIGNATURE):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an encoded picture's header, without decoding it; None if unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # Pillow raises many kinds; decoding later says what is wrong
        return None


def decode_image(data: bytes, *, max_pixels: int = MAX_PIXELS, source: str = "image") -> np.ndarray:
    """An (H,W,3) or (H,W,4) uint8 array from encoded bytes.

    The header's size is checked against ``max_pixels`` before any pixel is decoded, so a small
    file claiming a huge size (a decompression bomb) costs nothing. Grey, palette and 16-bit
    images come back as RGB (or RGBA when they have transparency).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise FileError(f"The {source} claims {width}x{height} pixels, over the limit of "
                                f"{max_pixels:,} pixels; it was not decoded.")
            image.load()
    except FileError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise FileError(f"The {source} was refused as a possible decompression bomb: {exc}") from None
    except Exception as exc:  # Pillow raises many kinds (OSError, SyntaxError, ValueError...)
        kind = sniff_mime(data) or "unknown format"
        raise FileError(f"The {source} ({len(data):,} bytes, {kind}) could not be decoded: {exc}. "
                        "It is corrupt, truncated or not an image.") from None
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    mode = "RGBA" if has_alpha else "RGB"
    if image.mode != mode:
        if image.mode.startswith("I;16") or image.mode == "I":
            # 16-bit grey: keep the top 8 bits instead of letting Pillow clip to 255.
            image = Image.fromarray((np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8))
        image = image.convert(mode)
    return np.asarray(image)
