"""SD3 Img2Img (fal) in a real ComfyUI, through POST /prompt, on a 50 ms network.

The emulator runs standalone (TLS 1.3, the network model of tests/fal_emulator.py); ComfyUI
runs with this pack linked in (tests/comfyui_server.py) and fal pointed at the emulator. A
prompt's wall time runs from POST /prompt to ComfyUI's "executing: null" on the websocket.

- fal: Load Image (512x512) -> SD3 Img2Img (fal) -> Save Image, a new seed each prompt;
- ComfyUI alone: Load Image -> Save Image, a new file name each prompt: ComfyUI's own cost of a
  prompt that saves a picture of the same size.

Overhead = fal prompt - job. Floor = ComfyUI alone + 3 RTT + the node's unavoidable CPU (see
benchmarks/network.py). The first fal prompt is the first after ComfyUI's start.
Needs COMFYUI_DIR (and COMFYUI_PYTHON for its virtual environment).
Run: COMFYUI_DIR=... COMFYUI_PYTHON=... python benchmarks/comfyui_network.py [runs]
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from PIL import Image

import network

sys.path.insert(0, str(network.ROOT / "tests"))  # the ComfyUI helper lives with the tests
from comfyui_server import running_comfyui  # noqa: E402

RTT = 0.05
PAUSE = 0.6
CLIENT = "benchmark"


def fal_prompt(seed: int) -> dict:
    return {"1": {"class_type": "LoadImage", "inputs": {"image": "bench.png"}},
            "2": {"class_type": "FalSD3Img2Img", "inputs": {**network.PARAMS, "seed": seed, "image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": f"fal{seed}"}}}


def alone_prompt(i: int) -> dict:
    return {"1": {"class_type": "LoadImage", "inputs": {"image": "bench.png"}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": f"alone{i}"}}}


async def timed(http: aiohttp.ClientSession, ws, url: str, prompt: dict) -> float:
    start = time.perf_counter()
    async with http.post(url + "/prompt", json={"prompt": prompt, "client_id": CLIENT}) as answer:
        body = await answer.json()
        if answer.status != 200:
            raise RuntimeError(f"ComfyUI refused the prompt: {body}")
    prompt_id = body["prompt_id"]
    async for message in ws:
        if message.type != aiohttp.WSMsgType.TEXT:
            continue
        event = json.loads(message.data)
        data = event.get("data", {})
        if data.get("prompt_id") != prompt_id:
            continue
        if event["type"] == "execution_error":
            raise RuntimeError(f"the prompt failed: {data.get('exception_message')}")
        if event["type"] == "executing" and data.get("node") is None:
            wall = time.perf_counter() - start
            # After a prompt ComfyUI may collect garbage (every 10 s, ~0.2 s here) before it takes
            # the next one: a pause keeps that housekeeping out of the next prompt's time.
            await asyncio.sleep(PAUSE)
            return wall
    raise RuntimeError("ComfyUI closed the websocket")


async def measure(url: str, runs: int, counter: network.Counter) -> dict:
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{url}/ws?clientId={CLIENT}") as ws:
        await timed(http, ws, url, alone_prompt(-1))  # Load Image's output is cached from here on
        opened = counter.connections()
        first = await timed(http, ws, url, fal_prompt(0)) - network.JOB_SECONDS
        first_connections = counter.connections() - opened
        fal, alone, requests, opened_warm = [], [], [], []
        for i in range(1, runs + 1):
            alone.append(await timed(http, ws, url, alone_prompt(i)))
            counter.http.post("/_emulator/reset")
            opened = counter.connections()
            fal.append(await timed(http, ws, url, fal_prompt(i)) - network.JOB_SECONDS)
            requests.append(len(counter.http.get("/_emulator/calls").json()))
            opened_warm.append(counter.connections() - opened)
    return {"first": first, "first_connections": first_connections, "warm": statistics.median(fal),
            "alone": statistics.median(alone), "requests": statistics.median(requests),
            "warm_connections": max(opened_warm)}


def main() -> int:
    if not os.environ.get("COMFYUI_DIR"):
        print("set COMFYUI_DIR to a ComfyUI checkout (and COMFYUI_PYTHON to its Python)")
        return 2
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    network.load_pack(network.ROOT)
    pixels = network.source_picture()
    cpu = network.unavoidable(network.node_cpu(pixels))
    with network.emulator(RTT) as info, tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        (base / "input").mkdir()
        Image.fromarray(pixels).save(base / "input" / "bench.png")
        env = {**os.environ, "FAL_KEY": info["key"], "FAL_QUEUE_URL": info["queue_url"],
               "FAL_REST_URL": info["rest_url"], "FAL_CDN_URL": info["cdn_url"], "FAL_API_URL": info["api_url"],
               "SSL_CERT_FILE": info["ca_file"], "FAL_SD3_STATE_DIR": str(base / "state")}
        os.environ["FAL_QUEUE_URL"], os.environ["SSL_CERT_FILE"] = info["queue_url"], info["ca_file"]
        with running_comfyui(base, env) as url:
            time.sleep(3)  # a user's first prompt comes a moment after the start
            counter = network.Counter()
            result = asyncio.run(measure(url, runs, counter))
    floor = result["alone"] + 3 * RTT + cpu
    print(f"SD3 Img2Img (fal) in ComfyUI (POST /prompt to the end of the prompt), {network.SIDE}x{network.SIDE} "
          f"picture, {network.JOB_SECONDS:.1f} s job, emulator over TLS 1.3 at RTT {RTT * 1000:.0f} ms, "
          f"median of {runs}")
    print(f"ComfyUI alone (Load Image -> Save Image): {result['alone'] * 1000:.0f} ms; node CPU {cpu * 1000:.0f} ms; "
          f"floor = those + 3 RTT = {floor * 1000:.0f} ms\n")
    print(f"{'run':<8}{'overhead ms':>12}{'- floor ms':>12}{'requests':>10}{'new connections':>17}")
    print(f"{'first':<8}{result['first'] * 1000:12.0f}{(result['first'] - floor) * 1000:12.0f}{'':>10}"
          f"{result['first_connections']:17d}")
    print(f"{'warm':<8}{result['warm'] * 1000:12.0f}{(result['warm'] - floor) * 1000:12.0f}{result['requests']:10.0f}"
          f"{result['warm_connections']:17d}")
    print(f"\ntargets: warm - floor <= 40 ms; first - floor <= {2 * RTT * 1000 + 40:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
