"""Connections on a real network: the emulator's latency model, and a pool that outlives each
prompt's event loop, counted by the connections the emulator accepted."""

import asyncio
import json
import shutil
import ssl
import threading
import time

import httpx
import numpy as np
import pytest
import torch

from comfyui_fal_sd3.fal_core import FalClient, img2img
from comfyui_fal_sd3.fal_core.errors import AuthError
from comfyui_fal_sd3.fal_core.schema import ENDPOINT
from comfyui_fal_sd3.nodes import comfy
from comfyui_fal_sd3.nodes.fal_img2img import FalSD3Img2Img
from fal_emulator import FalEmulator, expected_output

RTT = 0.2
# The emulator's test CA is made with the openssl command.
needs_openssl = pytest.mark.skipif(not shutil.which("openssl"), reason="the TLS mode needs the openssl command")
# Less than one round trip: a charge too many or too few shows, a busy machine does not.
SLACK = 0.75 * RTT
DEFAULTS = dict(prompt="a cat", negative_prompt="", prompt_expansion=False, num_inference_steps=28, seed=42,
                guidance_scale=5.0, num_images=1, enable_safety_checker=True, strength=0.9, sync_mode=False)


def picture(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (64, 72, 3), dtype=np.uint8)


def run_node(**kwargs):
    """One prompt, as ComfyUI runs it: a fresh event loop each time."""
    image = torch.from_numpy(picture(kwargs.pop("picture_seed", 0))[None]).float() / 255.0
    return asyncio.run(FalSD3Img2Img().run(**{**DEFAULTS, "image": image, **kwargs}))


def timed_get(client: httpx.Client, url: str) -> float:
    start = time.perf_counter()
    client.get(url)
    return time.perf_counter() - start


@pytest.mark.parametrize("tls", [False, pytest.param(True, marks=needs_openssl)])
def test_latency_model_charges_a_round_trip_per_request_and_per_handshake(tls):
    with FalEmulator(rtt=RTT, tls=tls) as emu:
        verify = ssl.create_default_context(cafile=emu.ca_file) if tls else True
        url = emu.queue_url + "/fal-ai/x/requests/unknown/status"
        with httpx.Client(verify=verify) as client:
            sent = time.monotonic()
            first = timed_get(client, url)
            reused = [timed_get(client, url) for _ in range(2)]
        handshakes = 2 if tls else 1  # TCP, then TLS 1.3
        assert (1 + handshakes) * RTT <= first < (1 + handshakes) * RTT + SLACK
        assert all(RTT <= t < RTT + SLACK for t in reused)
        # The request reached the server RTT/2 after it left, plus the handshakes.
        arrived = emu.calls()[0].time - sent
        assert (handshakes + 0.5) * RTT <= arrived < (handshakes + 0.5) * RTT + SLACK
        assert emu.connections() == {"api": 1, "cdn": 0}


def test_latency_model_delays_each_stream_event_by_half_a_round_trip():
    with FalEmulator(rtt=RTT, job_seconds=0.3) as emu:
        async def follow():
            async with FalClient(key=emu.key, queue_url=emu.queue_url, rest_url=emu.rest_url,
                                 cdn_url=emu.cdn_url) as fal:
                handle = await fal.queue.submit(ENDPOINT, {"prompt": "a cat", "image_url": _data_uri()})
                async for status in fal.queue.stream_status(handle):
                    if status.completed:
                        return time.monotonic(), handle
        seen, handle = asyncio.run(follow())
        job = emu.jobs[handle.request_id]
        late = seen - (job.created + job.job_seconds)
        assert RTT / 2 <= late < RTT / 2 + SLACK


def _data_uri():
    import base64
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(picture()).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_connections_outlive_each_prompt_and_a_run_makes_four_requests(fal_env):
    images, *_ = run_node(seed=1)
    assert np.array_equal((images[0].numpy() * 255).round().astype(np.uint8), expected_output(picture(), 0, None))
    # One connection to the queue host (submit, stream and result in turn) and one to the CDN.
    assert fal_env.connections() == {"api": 1, "cdn": 1}
    for seed in (2, 3):
        fal_env.reset()
        run_node(seed=seed)
        assert [c.kind for c in fal_env.calls()] == ["submit", "stream", "result", "file"]
    assert fal_env.connections() == {"api": 1, "cdn": 1}


def test_a_batch_shares_the_pool_and_a_warm_batch_opens_nothing(fal_env):
    four = torch.from_numpy(np.stack([picture(i) for i in range(4)])).float() / 255.0
    asyncio.run(FalSD3Img2Img().run(**{**DEFAULTS, "image": four, "seed": 10}))
    opened = fal_env.connections()
    assert opened["api"] <= 4 and opened["cdn"] <= 4
    asyncio.run(FalSD3Img2Img().run(**{**DEFAULTS, "image": four, "seed": 20}))
    assert fal_env.connections() == opened


def test_a_connection_dropped_while_idle_is_replaced_and_nothing_is_sent_twice(fal_env):
    run_node(seed=1)
    assert fal_env.drop_connections() == 2
    time.sleep(0.05)  # the client's side sees the close while the connections sit in the pool
    images, *_ = run_node(seed=2)
    assert images.shape == (1, 64, 72, 3)
    assert fal_env.count("submit") == 2
    assert fal_env.connections() == {"api": 2, "cdn": 2}


def test_a_new_key_takes_effect_on_the_next_run_over_the_same_connections(fal_env, monkeypatch):
    run_node(seed=1)
    monkeypatch.setenv("FAL_KEY", "other-id:other-secret-value")
    with pytest.raises(AuthError):
        run_node(seed=2)
    assert fal_env.calls("submit")[-1].headers["authorization"] == "Key other-id:other-secret-value"
    monkeypatch.setenv("FAL_KEY", fal_env.key)
    run_node(seed=3)
    assert fal_env.connections()["api"] == 1


def test_cancel_reaches_fal_within_a_second_over_the_pool(fal_env, monkeypatch):
    run_node(seed=1)
    fal_env.job_seconds = 30
    pressed = threading.Event()
    monkeypatch.setattr(comfy, "interrupted", pressed.is_set)
    threading.Timer(0.3, pressed.set).start()
    start = time.monotonic()
    with pytest.raises(comfy.Interrupted):
        run_node(seed=2)
    assert time.monotonic() - start < 0.3 + 1.0
    assert fal_env.count("cancel") == 1 and fal_env.calls("cancel")[0].status == 202
    # The stream's connection is closed mid-answer; the cancel needs one of its own.
    assert fal_env.connections()["api"] == 2


@needs_openssl
def test_the_tls_path_with_the_test_ca(monkeypatch):
    with FalEmulator(tls=True) as emu:
        monkeypatch.setenv("SSL_CERT_FILE", emu.ca_file)

        async def job():
            async with FalClient(key=emu.key, queue_url=emu.queue_url, rest_url=emu.rest_url,
                                 cdn_url=emu.cdn_url) as fal:
                return await img2img(fal, picture(), {"prompt": "a cat", "seed": 1})
        result = asyncio.run(job())
        assert emu.queue_url.startswith("https://")
        assert np.array_equal(result.images[0], expected_output(picture(), 0, None))
        assert emu.connections() == {"api": 1, "cdn": 1}
        assert json.loads(json.dumps(result.raw))["images"][0]["url"].startswith(emu.cdn_url)


def test_preparing_at_start_loads_the_run_and_sends_nothing(fal_env):
    from comfyui_fal_sd3.nodes import session

    session.prepare().join(30)
    assert session.engine().loop.is_running()
    assert fal_env.connections() == {"api": 0, "cdn": 0} and fal_env.calls() == []


@needs_openssl
def test_the_cdn_connection_opens_while_the_job_runs(monkeypatch):
    with FalEmulator(rtt=RTT, tls=True, job_seconds=0.5) as emu:
        monkeypatch.setenv("SSL_CERT_FILE", emu.ca_file)

        async def job():
            async with FalClient(key=emu.key, queue_url=emu.queue_url, rest_url=emu.rest_url,
                                 cdn_url=emu.cdn_url) as fal:
                return await img2img(fal, picture(), {"prompt": "a cat", "seed": 1})
        asyncio.run(job())
        result, download = emu.calls("result")[0], emu.calls("file")[0]
        # The answer's way back and the download's way out: no TCP or TLS round trip left to pay.
        assert RTT <= download.time - result.time < RTT + SLACK
        assert emu.connections() == {"api": 1, "cdn": 1}
