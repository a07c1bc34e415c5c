"""SD3 Img2Img (local diffusers) inside a real ComfyUI on the CPU, with a tiny SD3 in its models folders.

Skipped unless COMFYUI_DIR points at a ComfyUI checkout whose Python (COMFYUI_PYTHON) has diffusers.
"""

import copy
import json
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from comfyui_server import EXAMPLES, ROOT, requires_comfyui, queue_prompt, running_comfyui, wait_history

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

    def loads() -> int:
        return log.read_text().count("SD3 Img2Img (local): loaded")
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


def comfyui_log(base) -> str:
    return (base / "comfyui.log").read_text()


def test_components_load_through_comfyuis_model_management_and_unload_models_releases_them(comfyui):
    url, base = comfyui

    def loads() -> int:
        return comfyui_log(base).count("SD3 Img2Img (local): loaded")
    entry = wait_history(url, queue_prompt(url, local_prompt(seed=40)), timeout=300)
    assert entry["status"]["status_str"] == "success"
    # ComfyUI's load_models_gpu names each model it is asked to load.
    assert "Requested to load SD3Component" in comfyui_log(base)
    before = loads()
    assert httpx.post(f"{url}/free", json={"unload_models": True}, timeout=10).status_code == 200
    deadline = time.monotonic() + 60
    while "ComfyUI unloaded the model; pipeline released" not in comfyui_log(base):
        assert time.monotonic() < deadline, comfyui_log(base)[-3000:]
        time.sleep(0.2)
    entry = wait_history(url, queue_prompt(url, local_prompt(seed=41)), timeout=300)
    assert entry["status"]["status_str"] == "success"
    assert loads() == before + 1


# Runs in ComfyUI's own Python with its model management imported (as inside ComfyUI on the CPU).
MODEL_MANAGEMENT_SCRIPT = r"""
import gc, importlib.util, json, sys, weakref
from pathlib import Path
root, tests, comfyui, model = map(Path, sys.argv[1:5])
sys.argv = [sys.argv[0], "--cpu"]
sys.path[:0] = [str(comfyui), str(tests)]
import comfy.options
comfy.options.enable_args_parsing()
import comfy.model_management as mm
import torch
spec = importlib.util.spec_from_file_location("comfyui_fal_sd3", root / "__init__.py",
                                              submodule_search_locations=[str(root)])
pack = importlib.util.module_from_spec(spec)
sys.modules["comfyui_fal_sd3"] = pack
spec.loader.exec_module(pack)
from comfyui_fal_sd3.nodes.local_img2img import DiffusersSD3Img2Img

node = DiffusersSD3Img2Img()
picture = torch.rand(1, 64, 64, 3)
report = {}

def run(seed):
    node.run("custom path", picture, prompt="a red cat", negative_prompt="", num_inference_steps=4, seed=seed,
             guidance_scale=5.0, num_images=1, strength=0.75, model_path=str(model))

def ours():
    return sorted(m.model.name for m in mm.loaded_models() if type(m.model).__name__ == "SD3Component")

run(1)
report["registered"] = ours()
report["load_device"] = str(node.cache._managed.patchers["transformer"].load_device)
weights = weakref.ref(node.cache._pipe.transformer)
# RAM is short (as ComfyUI reads it) and a node asks for a little: on the CPU ComfyUI would only
# partially unload a model to the CPU, which frees nothing; the pipeline goes instead.
free = mm.get_free_memory
mm.get_free_memory = lambda dev=None, torch_free_too=False: (0, 0) if torch_free_too else 0
mm.free_memory(1024, mm.get_torch_device())
mm.get_free_memory = free
gc.collect()
report["after_free_memory"] = {"pipe": node.cache._pipe is not None, "weights_alive": weights() is not None}
run(2)
report["reregistered"] = ours()
weights = weakref.ref(node.cache._pipe.transformer)
mm.unload_all_models()  # what "Unload models" (POST /free) runs
gc.collect()
report["after_unload"] = {"pipe": node.cache._pipe is not None, "weights_alive": weights() is not None,
                          "registered": ours()}
run(3)
report["loads"] = node.cache.loads
print("REPORT " + json.dumps(report))
"""


def test_comfyuis_memory_calls_release_the_pipeline_on_the_cpu(tmp_path):
    pytest.importorskip("diffusers")
    import tiny_sd3

    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    model = tiny_sd3.save(tmp_path / "tiny-sd3")
    done = subprocess.run([python, "-c", MODEL_MANAGEMENT_SCRIPT, str(ROOT), str(ROOT / "tests"),
                           os.environ["COMFYUI_DIR"], str(model)], capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    report = json.loads(lines[0][len("REPORT "):])
    components = ["text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae"]
    assert report["registered"] == components and report["load_device"] == "cpu"
    assert report["after_free_memory"] == {"pipe": False, "weights_alive": False}
    assert report["reregistered"] == components
    assert report["after_unload"] == {"pipe": False, "weights_alive": False, "registered": []}
    assert report["loads"] == 3
