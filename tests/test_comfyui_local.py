"""SD3 Img2Img (local diffusers) inside a real ComfyUI on the CPU, with a tiny SD3 in its models folders.

Skipped unless COMFYUI_DIR points at a ComfyUI checkout whose Python (COMFYUI_PYTHON) has diffusers.
"""

import copy
import json
import os
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from comfyui_server import EXAMPLES, requires_comfyui, queue_prompt, running_comfyui, wait_history

pytestmark = requires_comfyui
MODEL = "diffusers/tiny-sd3"
CHECKPOINT = "checkpoints/sd3/tiny_sd3.safetensors"


@pytest.fixture(scope="module")
def comfyui(tmp_path_factory):
    pytest.importorskip("diffusers")
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    if subprocess.run([python, "-c", "import diffusers, transformers"], capture_output=True).returncode:
        pytest.skip("ComfyUI's Python has no diffusers (pip install the pack's [local] extra into it)")
    import tiny_sd3

    base = tmp_path_factory.mktemp("comfyui")
    tiny_sd3.save(base / "models" / "diffusers" / "tiny-sd3")
    tiny_sd3.save_single_file(base / "models" / "checkpoints" / "sd3" / "tiny_sd3.safetensors")
    env = {**os.environ, "FAL_SD3_STATE_DIR": str(base / "state")}
    env.pop("FAL_KEY", None)
    with running_comfyui(base, env) as url:
        yield url, base


def local_prompt(**changes) -> dict:
    prompt = copy.deepcopy(json.loads((EXAMPLES / "api" / "sd3_img2img_local.json").read_text()))
    node = next(n for n in prompt.values() if n["class_type"] == "DiffusersSD3Img2Img")
    node["inputs"].update({"model": MODEL, "num_inference_steps": 4, **changes})
    size = next(n for n in prompt.values() if n["class_type"] == "FalSD3ImageSize")
    size["inputs"].update(preset="custom", width=128, height=64)
    return prompt


def saved_images(base, entry) -> list[np.ndarray]:
    outputs = [o for o in entry["outputs"].values() if "images" in o]
    return [np.array(Image.open(base / "output" / img["subfolder"] / img["filename"]))
            for o in outputs for img in o["images"]]


def test_model_menu_lists_the_models_in_comfyuis_folders(comfyui):
    url, _ = comfyui
    info = httpx.get(f"{url}/object_info/DiffusersSD3Img2Img", timeout=30).json()["DiffusersSD3Img2Img"]
    menu = info["input"]["required"]["model"][0]
    assert menu == [MODEL, CHECKPOINT, "custom path"]
    assert info["display_name"] == "SD3 Img2Img (local diffusers)"


@pytest.mark.parametrize("model", [MODEL, CHECKPOINT])
def test_example_workflow_runs_through_the_http_api(comfyui, model):
    url, base = comfyui
    # The tiny checkpoint is not SD3 medium, whose configs ship with the pack: the tiny diffusers
    # folder serves as its config folder.
    changes = {"config_path": str(base / "models" / "diffusers" / "tiny-sd3")} if model == CHECKPOINT else {}
    entry = wait_history(url, queue_prompt(url, local_prompt(model=model, seed=3, **changes)), timeout=300)
    assert entry["status"]["status_str"] == "success", entry["status"]["messages"]
    (image,) = saved_images(base, entry)
    assert image.shape == (64, 128, 3)


def test_second_run_reuses_the_loaded_pipeline(comfyui):
    url, base = comfyui
    log = base / "comfyui.log"
    loads = lambda: log.read_text().count("SD3 Img2Img (local): loaded")
    for seed in (10, 11):
        entry = wait_history(url, queue_prompt(url, local_prompt(seed=seed)), timeout=300)
        assert entry["status"]["status_str"] == "success"
        if seed == 10:
            before = loads()
    assert loads() == before >= 1


def test_a_missing_model_is_a_clear_error_in_the_history(comfyui):
    url, _ = comfyui
    entry = wait_history(url, queue_prompt(url, local_prompt(model="custom path", model_path="/nowhere/sd3")))
    assert entry["status"]["status_str"] == "error"
    message = next(m[1] for m in entry["status"]["messages"] if m[0] == "execution_error")
    assert "model_path: '/nowhere/sd3' does not exist" in message["exception_message"]


def test_cancel_stops_the_run_within_a_step(comfyui):
    """Cancel (/interrupt) during denoising: ComfyUI reports the run interrupted, and no step
    runs after the one in progress (read from ComfyUI's own progress messages)."""
    import asyncio

    import aiohttp

    url, _ = comfyui
    steps = 50

    async def run() -> tuple[list[int], int, dict]:
        values: list[int] = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{url}/ws?clientId=local-cancel") as ws:
                prompt = local_prompt(seed=123, num_inference_steps=steps, strength=1.0)
                # Steps of tens of milliseconds (512x512), so that "within a step" is observable.
                size = next(n for n in prompt.values() if n["class_type"] == "FalSD3ImageSize")
                size["inputs"].update(width=512, height=512)
                prompt_id = await asyncio.to_thread(queue_prompt, url, prompt, "local-cancel")
                interrupted_at = None
                async for message in ws:
                    if message.type != aiohttp.WSMsgType.TEXT:
                        continue
                    event = json.loads(message.data)
                    if event["type"] == "progress" and event["data"].get("prompt_id") == prompt_id:
                        values.append(event["data"]["value"])
                        if interrupted_at is None and event["data"]["value"] >= 2:
                            interrupted_at = event["data"]["value"]
                            await session.post(f"{url}/interrupt")
                    if event["type"] in ("execution_interrupted", "execution_success", "execution_error") \
                            and event["data"].get("prompt_id") == prompt_id:
                        break
        return values, interrupted_at, await asyncio.to_thread(wait_history, url, prompt_id)

    values, interrupted_at, entry = asyncio.run(asyncio.wait_for(run(), 300))
    assert "execution_interrupted" in json.dumps(entry["status"]["messages"])
    # The step already running when Cancel reached the server may finish; no later step starts.
    assert max(values) <= interrupted_at + 2 < steps
