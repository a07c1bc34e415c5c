"""Uploads to the emulated fal storage: bytes arrive intact, once, by the right path."""

import asyncio

import numpy as np
import pytest

from comfyui_fal_sd3.fal_core import FalClient, RetryPolicy, UploadCache
from comfyui_fal_sd3.fal_core import storage as storage_module
from comfyui_fal_sd3.fal_core.errors import AuthError, FileError
from comfyui_fal_sd3.fal_core.files import fetch_bytes, fetch_image
from comfyui_fal_sd3.fal_core.images import encode_png

FAST = RetryPolicy(attempts=3, base=0.01, cap=0.02)


def client(emu, **kwargs):
    return FalClient(key=emu.key, queue_url=emu.queue_url, rest_url=emu.rest_url, cdn_url=emu.cdn_url,
                     retry=FAST, **kwargs)


def run(coro):
    return asyncio.run(coro)


def test_cdn_upload_stores_the_exact_bytes_and_key_stays_home(fal_emulator):
    data = bytes(range(256)) * 100

    async def go():
        async with client(fal_emulator) as fal:
            return await fal.storage.upload(data, "application/octet-stream", file_name="blob.bin")

    url = run(go())
    assert fal_emulator.files[url][0] == data
    upload = fal_emulator.calls("upload")[0]
    assert upload.headers["authorization"].startswith("Bearer ")
    assert upload.headers["x-fal-file-name"] == "blob.bin"
    assert fal_emulator.key not in upload.headers["authorization"]
    assert fal_emulator.calls("token")[0].headers["authorization"] == f"Key {fal_emulator.key}"


def test_same_bytes_upload_once_even_concurrently_and_across_restarts(fal_emulator, tmp_path):
    data = encode_png(np.full((32, 32, 3), 7, np.uint8))
    cache_file = tmp_path / "uploads.json"

    async def go():
        async with client(fal_emulator, upload_cache=UploadCache(cache_file)) as fal:
            return await asyncio.gather(*(fal.storage.upload(data, "image/png") for _ in range(5)))

    first = run(go())
    assert len(set(first)) == 1 and fal_emulator.count("upload") == 1
    assert run(go()) == first  # a new client (a restarted ComfyUI) reads the cache file
    assert fal_emulator.count("upload") == 1 and fal_emulator.count("token") == 1


def test_cache_entries_expire(tmp_path):
    cache = UploadCache(tmp_path / "c.json", ttl=0.0)
    cache.put("d", "https://x")
    assert cache.get("d") is None
    damaged = tmp_path / "bad.json"
    damaged.write_text("{not json")
    assert UploadCache(damaged).get("d") is None


def test_multipart_upload_above_threshold(fal_emulator, monkeypatch):
    monkeypatch.setattr(storage_module, "MULTIPART_THRESHOLD", 1000)
    monkeypatch.setattr(storage_module, "MULTIPART_CHUNK", 300)
    data = np.random.default_rng(0).integers(0, 256, 1100, dtype=np.uint8).tobytes()

    async def go():
        async with client(fal_emulator) as fal:
            return await fal.storage.upload(data, "application/octet-stream")

    url = run(go())
    assert fal_emulator.files[url][0] == data
    assert fal_emulator.count("multipart_part") == 4 and fal_emulator.count("multipart_complete") == 1


def test_falls_back_to_initiate_and_put_when_the_cdn_fails(fal_emulator):
    fal_emulator.fault("upload", times=3, status=500, request_id_header=True)

    async def go():
        async with client(fal_emulator) as fal:
            return await fal.storage.upload(b"hello world", "text/plain")

    url = run(go())
    assert fal_emulator.files[url][0] == b"hello world"
    assert fal_emulator.count("initiate") == 1 and fal_emulator.count("put_file") == 1
    put = fal_emulator.calls("put_file")[0]
    assert "authorization" not in put.headers  # a signed URL elsewhere never gets the fal key


def test_a_refused_key_does_not_fall_back(fal_emulator):
    async def go():
        async with FalClient(key="bad:key", queue_url=fal_emulator.queue_url, rest_url=fal_emulator.rest_url,
                             cdn_url=fal_emulator.cdn_url) as fal:
            await fal.storage.upload(b"x", "text/plain")

    with pytest.raises(AuthError):
        run(go())
    assert fal_emulator.count("initiate") == 0


def test_image_url_inlines_small_and_uploads_large(fal_emulator):
    small, large = b"\x89PNG" + b"s" * 100, b"\x89PNG" + b"L" * 2_000_000

    async def go():
        async with client(fal_emulator) as fal:
            return (await fal.storage.image_url(small, "image/png"),
                    await fal.storage.image_url(large, "image/png"),
                    await fal.storage.image_url(small, "image/png", mode="upload"))

    inline, uploaded, forced = run(go())
    assert inline.startswith("data:image/png;base64,")
    assert uploaded.startswith(fal_emulator.cdn_url) and forced.startswith(fal_emulator.cdn_url)


def test_downloads_are_capped_and_decoded(fal_emulator):
    picture = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)

    async def go():
        async with client(fal_emulator) as fal:
            url = await fal.storage.upload(encode_png(picture), "image/png")
            decoded = await fetch_image(fal.transport, url)
            with pytest.raises(FileError, match="over the limit"):
                await fetch_bytes(fal.transport, url, max_bytes=10)
            return url, decoded

    url, decoded = run(go())
    assert np.array_equal(decoded, picture)
    assert "authorization" not in fal_emulator.calls("file")[0].headers
