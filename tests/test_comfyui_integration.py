"""The pack inside a real ComfyUI, on the CPU, against the fal emulator.

Skipped unless COMFYUI_DIR points at a ComfyUI checkout. COMFYUI_PYTHON names the Python that
runs it (its own virtual environment, with torchvision); by default the one running the tests.
"""

import json
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from comfyui_server import EXAMPLES, queue_prompt, requires_comfyui, wait_history
from fal_emulator import PRESETS, FalEmulator, expected_output

pytestmark = requires_comfyui

API_EXAMPLES = EXAMPLES / "api"
KEY = "integration-id:integration-secret-0123456789"


@pytest.fixture(scope="module")
def emulator():
    with FalEmulator(key=KEY, job_seconds=0.3) as emu:
        yield emu


def test_pack_loads_and_lists_its_nodes(comfyui):
    info = httpx.get(comfyui["url"] + "/object_info", timeout=30).json()
    for node_id in ("FalSD3ImageSize", "FalUploadImage", "FalSD3Img2Img"):
        assert node_id in info, f"{node_id} missing from /object_info"
    templates = httpx.get(comfyui["url"] + "/workflow_templates", timeout=30).json()
    listed = next(v for k, v in templates.items() if "fal" in k)
    assert {"sd3_img2img_fal", "sd3_img2img_fal_upload"} <= set(listed)


@pytest.mark.parametrize("example, size", [("sd3_img2img_fal.json", (1024, 1024)),
                                           ("sd3_img2img_fal_upload.json", None)])
def test_api_example_runs_headless_and_saves_the_image(comfyui, emulator, example, size):
    submits = emulator.count("submit")
    prompt = json.loads((API_EXAMPLES / example).read_text())
    entry = wait_history(comfyui["url"], queue_prompt(comfyui["url"], prompt))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:2000]
    saved = [img for out in entry["outputs"].values() for img in out.get("images", [])]
    assert len(saved) == 1
    path = comfyui["base"] / "output" / saved[0].get("subfolder", "") / saved[0]["filename"]
    result = np.asarray(Image.open(path).convert("RGB"))
    assert np.array_equal(result, expected_output(comfyui["picture"], 0, size))
    assert emulator.count("submit") == submits + 1
    assert KEY not in json.dumps(entry) and KEY.split(":")[1] not in path.read_bytes().decode("latin-1")


def test_editor_routes_budget_refusal_result_node_and_a_quiet_log(comfyui, emulator):
    url = comfyui["url"]
    assert httpx.post(url + "/fal/key/test", json={}, timeout=30).json() == {"ok": True, "source": "env"}
    price = httpx.get(url + "/fal/price", timeout=30).json()
    assert price["endpoint_id"] == "fal-ai/stable-diffusion-v3-medium/image-to-image" and price["unit"] == "image"
    deadline = time.monotonic() + 10
    while price["source"] != "fal":  # refreshed in the background (or by a run before)
        assert time.monotonic() < deadline, price
        time.sleep(0.1)
        price = httpx.get(url + "/fal/price", timeout=30).json()
    assert price["unit_price"] == 0.04
    assert emulator.count("pricing") == 1  # asked once, at ComfyUI's start, and kept
    budget = httpx.get(url + "/fal/budget", timeout=30).json()
    paid = emulator.count("submit")  # each at the published price or, once a run refreshed it, fal's
    assert paid >= 1 and 0.035 * paid - 1e-9 <= budget["spent_today"] <= 0.04 * paid + 1e-9

    # A daily budget of 0 refuses the next paid run before anything is sent.
    submits = emulator.count("submit")
    assert httpx.post(url + "/fal/budget", json={"daily_budget": 0}, timeout=30).json()["daily_budget"] == 0
    try:
        prompt = json.loads((API_EXAMPLES / "sd3_img2img_fal.json").read_text())
        prompt["3"]["inputs"]["seed"] = 4242
        entry = wait_history(url, queue_prompt(url, prompt))
        assert entry["status"]["status_str"] == "error"
        assert "Daily fal budget" in json.dumps(entry["status"]) and emulator.count("submit") == submits
    finally:
        httpx.post(url + "/fal/budget", json={"daily_budget": None}, timeout=30)

    # The newest paid request, recovered in the graph.
    newest = max(emulator.jobs.values(), key=lambda job: job.created)
    size = newest.input.get("image_size")
    size = PRESETS[size] if isinstance(size, str) else (size["width"], size["height"]) if size else None
    recovery = {"1": {"class_type": "FalRequestResult", "inputs": {"request_id": ""}},
                "2": {"class_type": "SaveImage", "inputs": {"filename_prefix": "recovered", "images": ["1", 0]}}}
    entry = wait_history(url, queue_prompt(url, recovery))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:2000]
    (saved,) = entry["outputs"]["2"]["images"]
    result = np.asarray(Image.open(comfyui["base"] / "output" / saved["subfolder"] / saved["filename"]).convert("RGB"))
    assert np.array_equal(result, expected_output(comfyui["picture"], 0, size))
    assert emulator.count("submit") == submits

    log = (comfyui["base"] / "comfyui.log").read_text()
    assert log.count("got prompt") >= 4  # ComfyUI's INFO lines are there: the runs above were logged
    assert "HTTP Request:" not in log and KEY not in log


def test_interrupt_cancels_the_request_at_fal(comfyui, emulator):
    emulator.job_seconds = 30
    try:
        prompt = json.loads((API_EXAMPLES / "sd3_img2img_fal.json").read_text())
        prompt["3"]["inputs"]["seed"] = 777  # a new input, so ComfyUI's cache does not answer
        cancels = emulator.count("cancel")
        prompt_id = queue_prompt(comfyui["url"], prompt)
        deadline = time.monotonic() + 60
        while not any(j.input.get("seed") == 777 for j in list(emulator.jobs.values())):
            assert time.monotonic() < deadline, "the request never reached the emulator"
            time.sleep(0.1)
        pressed = time.monotonic()
        httpx.post(comfyui["url"] + "/interrupt", timeout=10)
        while emulator.count("cancel") == cancels:
            assert time.monotonic() - pressed < 2.0, "no cancel reached fal within 2 s of Cancel"
            time.sleep(0.05)
        entry = wait_history(comfyui["url"], prompt_id)
        messages = json.dumps(entry["status"].get("messages", []))
        assert "execution_interrupted" in messages
    finally:
        emulator.job_seconds = 0.3


@pytest.mark.parametrize("seed, fault", [
    (901, dict(drop="after")),                       # fal accepted, its answer was lost
    (902, dict(status=504, accept=True)),            # a gateway gave up after fal took it
    (903, dict(hide_request_id=True)),               # 2xx without request_id or header
])
def test_a_lost_submit_answer_costs_one_submit_in_a_real_comfyui(comfyui, emulator, seed, fault):
    accepted = emulator.accepted()
    emulator.fault("submit", **fault)
    prompt = json.loads((API_EXAMPLES / "sd3_img2img_fal.json").read_text())
    node = next(n for n in prompt.values() if n["class_type"] == "FalSD3Img2Img")
    node["inputs"]["seed"] = seed  # a job of its own: ComfyUI's cache cannot answer it
    entry = wait_history(comfyui["url"], queue_prompt(comfyui["url"], prompt))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:2000]
    saved = [img for out in entry["outputs"].values() for img in out.get("images", [])]
    path = comfyui["base"] / "output" / saved[0].get("subfolder", "") / saved[0]["filename"]
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")),
                          expected_output(comfyui["picture"], 0, (1024, 1024)))
    assert emulator.accepted() == accepted + 1 and emulator.count("history") >= 1
