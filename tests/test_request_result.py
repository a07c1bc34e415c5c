"""fal Request Result: a paid result recovered in the graph, from the journal or fal's queue, never paid again."""

import asyncio
import base64
import io
import json
import time

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_fal_sd3.fal_core.errors import InputError, JobError
from comfyui_fal_sd3.fal_core.schema import ENDPOINT
from comfyui_fal_sd3.fal_core.status import RequestHandle
from comfyui_fal_sd3.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, session
from comfyui_fal_sd3.nodes.fal_img2img import FalSD3Img2Img
from comfyui_fal_sd3.nodes.request_result import FalRequestResult
from fal_emulator import expected_output

DEFAULTS = dict(prompt="a red boat", negative_prompt="", prompt_expansion=False, num_inference_steps=28, seed=11,
                guidance_scale=5.0, num_images=2, enable_safety_checker=True, strength=0.9, sync_mode=False)


def picture(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (64, 80, 3), dtype=np.uint8)


def tensor(array):
    return torch.from_numpy(array[None]).float() / 255.0


def pixels(images):
    return (images * 255).round().to(torch.uint8).numpy()


def recover(request_id=""):
    return asyncio.run(FalRequestResult().fetch(request_id))


@pytest.fixture
def node_env(fal_env, monkeypatch):
    monkeypatch.delenv("FAL_JOURNAL", raising=False)
    return fal_env


def test_registered_in_the_pack(node_env):
    assert NODE_CLASS_MAPPINGS["FalRequestResult"] is FalRequestResult
    assert NODE_DISPLAY_NAME_MAPPINGS["FalRequestResult"] == "fal Request Result"
    assert FalRequestResult.CATEGORY == "fal/SD3" and FalRequestResult.RETURN_TYPES == ("IMAGE", "STRING")


def test_a_journaled_result_by_id_or_as_the_newest_costs_no_call_to_fal(node_env):
    asyncio.run(FalSD3Img2Img().run(**DEFAULTS, image=tensor(picture(1))))
    _, _, _, response = asyncio.run(FalSD3Img2Img().run(**{**DEFAULTS, "seed": 12}, image=tensor(picture(2))))
    newest = json.loads(response)[0]["request_id"]
    calls = len(node_env.calls())
    for request_id in (newest, ""):
        images, answer = recover(request_id)
        assert images.shape == (2, 64, 80, 3)
        for k in range(2):
            assert np.array_equal(pixels(images)[k], expected_output(picture(2), k, None))
        assert json.loads(answer)[0]["request_id"] == newest
    assert len(node_env.calls()) == calls  # no status, no result, no download: all from the state folder
    assert node_env.count("submit") == 2
    assert FalRequestResult.IS_CHANGED("") == newest and FalRequestResult.IS_CHANGED(f" {newest} ") == newest


def submit_elsewhere(emu, array, **fields):
    """A request this journal never saw (another machine, a crashed process)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    answer = httpx.post(f"{emu.queue_url}/{ENDPOINT}", json={"image_url": uri, "prompt": "p", **fields},
                        headers={"Authorization": f"Key {emu.key}"})
    return answer.json()["request_id"]


def test_a_request_made_elsewhere_is_fetched_from_fals_queue(node_env):
    node_env.job_seconds = 0.01
    rid = submit_elsewhere(node_env, picture(3), num_images=1, image_size="square")
    time.sleep(0.1)
    images, answer = recover(rid)
    assert np.array_equal(pixels(images)[0], expected_output(picture(3), 0, (512, 512)))
    assert node_env.count("submit") == 1 and node_env.count("result") == 1 and node_env.count("cancel") == 0
    assert node_env.key not in answer


def test_a_pending_request_in_the_journal_is_finished_and_kept(node_env):
    """ComfyUI stopped after fal accepted the submit: the journal has it pending."""
    node_env.job_seconds = 0.01
    rid = submit_elsewhere(node_env, picture(4))
    handle = RequestHandle.from_request_id(node_env.queue_url, ENDPOINT, rid)
    session.journal().submitted("fp-pending", handle, {"prompt": "p"})
    time.sleep(0.1)
    images, _ = recover("")
    assert np.array_equal(pixels(images)[0], expected_output(picture(4), 0, None))
    assert session.journal().find_request(rid).state == "completed"
    results = node_env.count("result")
    recover(rid)
    assert node_env.count("result") == results  # the second time, the journal answers


def test_a_request_still_running_is_reported_and_never_cancelled(node_env):
    node_env.job_seconds = 30
    rid = submit_elsewhere(node_env, picture(5))
    with pytest.raises(JobError, match=f"{rid} is still in progress at fal; run this node again"):
        recover(rid)
    assert node_env.count("cancel") == 0 and node_env.count("submit") == 1


def test_bad_or_missing_ids_are_refused_before_any_call(node_env):
    with pytest.raises(InputError, match="holds no request of"):
        recover("")
    with pytest.raises(InputError, match="request_id='../../etc/passwd': is not a fal request id"):
        recover("../../etc/passwd")
    assert node_env.calls() == []


def test_an_unknown_id_says_what_fal_answered(node_env):
    with pytest.raises(Exception, match="404"):
        recover("0b9d7a4e-0000-4000-8000-000000000000")


def test_a_sync_mode_result_kept_as_files_beside_the_journal_is_recovered(node_env):
    """With sync_mode fal answers data URIs; the journal keeps them as files, not megabytes in a line."""
    _, _, _, response = asyncio.run(FalSD3Img2Img().run(**{**DEFAULTS, "sync_mode": True}, image=tensor(picture(6))))
    rid = json.loads(response)[0]["request_id"]
    calls = len(node_env.calls())
    images, _ = recover(rid)
    for k in range(2):
        assert np.array_equal(pixels(images)[k], expected_output(picture(6), k, None))
    assert len(node_env.calls()) == calls
