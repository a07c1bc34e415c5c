"""The fal nodes with real tensors in and out, against the emulator, as ComfyUI would call them."""

import asyncio
import json
import sys
import threading
import time
import types

import numpy as np
import pytest
import torch

from comfyui_fal_sd3.fal_core.errors import AuthError, InputError
from comfyui_fal_sd3.fal_core.schema import ImageSize
from comfyui_fal_sd3.nodes import NODE_CLASS_MAPPINGS, comfy
from comfyui_fal_sd3.nodes.fal_img2img import FalSD3Img2Img
from comfyui_fal_sd3.nodes.size_preset import FalSD3ImageSize
from comfyui_fal_sd3.nodes.upload import FalUploadImage
from fal_emulator import expected_output

DEFAULTS = dict(prompt="a cat", negative_prompt="", prompt_expansion=False, num_inference_steps=28, seed=42,
                guidance_scale=5.0, num_images=1, enable_safety_checker=True, strength=0.9, sync_mode=False)


def batch(*arrays):
    return torch.from_numpy(np.stack(arrays)).float() / 255.0


def picture(h=64, w=72, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def as_uint8(images):
    return (images * 255).round().to(torch.uint8).numpy()


def run(**kwargs):
    return asyncio.run(FalSD3Img2Img().run(**{**DEFAULTS, **kwargs}))


def test_pixels_and_size_of_the_returned_image(fal_env):
    pic = picture()
    images, seed, flags, response = run(image=batch(pic))
    assert images.shape == (1, 64, 72, 3) and images.dtype == torch.float32
    assert np.array_equal(as_uint8(images)[0], expected_output(pic, 0, None))
    assert seed == 42 and flags == [False]
    answer = json.loads(response)
    assert answer[0]["request_id"] in fal_env.jobs


def test_batch_of_three_with_two_images_each_keeps_order_and_seeds(fal_env):
    pics = [picture(seed=i) for i in range(3)]
    size = FalSD3ImageSize().build("custom", 64, 80)[0]
    images, seed, flags, _ = run(image=batch(*pics), num_images=2, image_size=size, seed=100)
    assert images.shape == (6, 80, 64, 3) and len(flags) == 6
    out = as_uint8(images)
    for i, pic in enumerate(pics):
        for k in range(2):
            assert np.array_equal(out[2 * i + k], expected_output(pic, k, (64, 80)))
    seeds = sorted(job.input["seed"] for job in fal_env.jobs.values())
    assert seeds == [100, 101, 102] and seed == 100


def test_batch_runs_concurrently(fal_env):
    fal_env.job_seconds = 0.5
    start = time.monotonic()
    run(image=batch(*[picture(seed=i) for i in range(4)]))
    assert time.monotonic() - start < 0.5 * 2


def test_upload_node_then_image_url(fal_env):
    pics = [picture(seed=1), picture(seed=2)]
    (urls,) = asyncio.run(FalUploadImage().upload(batch(*pics), "png"))
    lines = urls.splitlines()
    assert len(lines) == 2 and all(u in fal_env.files for u in lines)
    (again,) = asyncio.run(FalUploadImage().upload(batch(*pics), "png"))
    assert again == urls and fal_env.count("upload") == 2  # same pixels: no new upload
    images, *_ = run(image_url=urls, image_size=ImageSize.parse("square"))
    assert images.shape == (2, 512, 512, 3)
    assert np.array_equal(as_uint8(images)[1], expected_output(pics[1], 0, (512, 512)))


def test_results_of_different_sizes_are_a_clear_error(fal_env):
    (urls,) = asyncio.run(FalUploadImage().upload(batch(picture(40, 48)), "png"))
    (other,) = asyncio.run(FalUploadImage().upload(batch(picture(64, 64)), "png"))
    with pytest.raises(ValueError, match=r"images\[1\] is 64x64 but images\[0\] is 48x40.*image_size"):
        run(image_url=urls + "\n" + other)


def test_the_last_event_ends_the_run_on_any_error_and_on_cancel(fal_env, monkeypatch):
    shown = _fake_comfyui(monkeypatch)
    (urls,) = asyncio.run(FalUploadImage().upload(batch(picture(40, 48)), "png"))
    (other,) = asyncio.run(FalUploadImage().upload(batch(picture(64, 64)), "png"))
    with pytest.raises(ValueError):
        run(image_url=urls + "\n" + other, unique_id="5")
    last = shown["events"][-1]
    assert last["finished"] is True and "64x64" in last["error"]
    monkeypatch.setenv("FAL_KEY", "wrong-id:wrong-secret-value")
    with pytest.raises(AuthError):
        run(image=batch(picture()), unique_id="5")
    last = shown["events"][-1]
    assert last["finished"] is True and last["items"][0]["phase"] == "failed"
    assert "wrong-secret-value" not in json.dumps(shown["events"])
    monkeypatch.setenv("FAL_KEY", fal_env.key)
    fal_env.job_seconds = 30
    flag = threading.Event()
    monkeypatch.setattr(comfy, "interrupted", flag.is_set)
    threading.Timer(0.3, flag.set).start()
    with pytest.raises(comfy.Interrupted):
        run(image=batch(picture()), unique_id="5", seed=3)
    last = shown["events"][-1]
    assert last["finished"] is True and last["error"] is None and last["items"][0]["phase"] == "cancelled"


@pytest.mark.parametrize("image, url, message", [
    (None, "", "no picture to transform"),
    ("tensor", "https://x/y.png", "both image and image_url"),
])
def test_exactly_one_image_source(fal_env, image, url, message):
    with pytest.raises(ValueError, match=message):
        run(image=batch(picture()) if image else None, image_url=url)
    assert fal_env.calls() == []


def test_validation_error_names_the_input_before_sending(fal_env):
    with pytest.raises(InputError) as info:
        run(image=batch(picture()), prompt="  ", strength=0.0)
    assert "prompt=" in str(info.value) and "strength=0.0" in str(info.value)
    assert fal_env.calls() == []


def test_interrupt_cancels_every_running_request_at_fal(fal_env, monkeypatch):
    fal_env.job_seconds = 30
    flag = threading.Event()
    monkeypatch.setattr(comfy, "interrupted", flag.is_set)
    threading.Timer(0.5, flag.set).start()
    start = time.monotonic()
    with pytest.raises(comfy.Interrupted):
        run(image=batch(picture(seed=1), picture(seed=2)))
    assert time.monotonic() - start < 0.5 + 1.0
    assert fal_env.count("submit") == 2 and fal_env.count("cancel") == 2
    cancelled = {c.path.split("/")[-2] for c in fal_env.calls("cancel")}
    assert cancelled == set(fal_env.jobs)


def test_key_never_reaches_outputs_or_errors(fal_env, monkeypatch):
    _, _, _, response = run(image=batch(picture()))
    assert fal_env.key not in response and "test-key-secret" not in response
    monkeypatch.setenv("FAL_KEY", "wrong-id:wrong-secret-value")
    with pytest.raises(AuthError) as info:
        run(image=batch(picture()), seed=1)
    assert "wrong-secret-value" not in str(info.value) and "FAL_KEY" in str(info.value)
    assert "settings" in str(info.value)


def test_key_from_the_settings_file_when_env_is_unset(fal_env, monkeypatch):
    monkeypatch.delenv("FAL_KEY")
    key_file = comfy.key_file()
    key_file.parent.mkdir(parents=True)
    key_file.write_text(fal_env.key)
    images, *_ = run(image=batch(picture()))
    assert images.shape[0] == 1
    key_file.unlink()
    with pytest.raises(Exception, match="FAL_KEY.*settings"):
        run(image=batch(picture()), seed=1)


def test_nsfw_flags_are_passed_on_with_a_warning(fal_env, monkeypatch):
    shown = _fake_comfyui(monkeypatch)
    images, _, flags, _ = run(image=batch(picture()), prompt="nsfw scene", num_images=2, unique_id="7")
    assert flags == [True, True] and images.shape[0] == 2
    assert "fal flagged image 0, 1 as NSFW" in shown["events"][-1]["warning"]


def test_progress_bar_and_status_events_without_progress_text(fal_env, monkeypatch):
    fal_env.queue_seconds, fal_env.queue_positions = 0.3, 2
    shown = _fake_comfyui(monkeypatch)
    run(image=batch(picture()), unique_id="12", num_images=2)
    items = [e["items"][0] for e in shown["events"]]
    rid = next(iter(fal_env.jobs))
    assert items[0]["phase"] == "waiting" and shown["events"][0]["outcome"] == "running"
    assert any(i["phase"] == "in_queue" and i["queue_position"] == 1 and i["request_id"] == rid
               and i["label"] == "in queue (position 1)" for i in items)
    assert any(i["phase"] == "in_progress" and i["label"] == "running" and (i["log"] or "").startswith("Step")
               for i in items)
    last = shown["events"][-1]
    assert last["outcome"] == "done" and last["finished"] is True and last["num_images"] == 2
    assert last["items"] == [{"phase": "done", "label": "done", "queue_position": None, "request_id": rid,
                              "log": items[-1]["log"], "new_request": True}]
    assert shown["bar"][-1] == (10, 10)
    assert all(e["node"] == "12" for e in shown["events"])
    # ComfyUI's progress text would become a saved widget value in front end 1.27: never sent.
    assert shown["text"] == []


def test_every_phase_is_worded_once_on_the_server():
    from comfyui_fal_sd3.fal_core.phase import Phase
    from comfyui_fal_sd3.nodes.status_view import LABELS, label

    assert set(LABELS) == set(Phase)
    assert label(Phase.IN_QUEUE, 0) == "next in queue"
    assert label(Phase.IN_QUEUE, 3) == "in queue (position 3)"
    assert label(Phase.CHECKING_HISTORY, None) == "submit answer lost, checking fal's request history…"


def test_a_result_served_by_the_journal_is_marked_as_no_new_request(fal_env, monkeypatch):
    shown = _fake_comfyui(monkeypatch)
    run(image=batch(picture(seed=1), picture(seed=2)), unique_id="4")
    first = shown["events"][-1]
    run(image=batch(picture(seed=1), picture(seed=2)), unique_id="4")
    again = shown["events"][-1]
    assert fal_env.count("submit") == 2
    assert [i["new_request"] for i in first["items"]] == [True, True]
    assert again["outcome"] == "done" and [i["new_request"] for i in again["items"]] == [False, False]
    assert [i["request_id"] for i in again["items"]] == [i["request_id"] for i in first["items"]]


@pytest.mark.parametrize("image, url, message", [
    (None, "", "no picture to transform"),
    ("tensor", "https://x/y.png", "both image and image_url"),
])
def test_an_input_error_replaces_the_previous_status(fal_env, monkeypatch, image, url, message):
    shown = _fake_comfyui(monkeypatch)
    with pytest.raises(ValueError):
        run(image=batch(picture()) if image else None, image_url=url, unique_id="9")
    assert len(shown["events"]) == 1
    event = shown["events"][0]
    assert event["node"] == "9" and event["outcome"] == "failed" and message in event["error"]
    assert event["items"] == []


def test_size_preset_node():
    node = FalSD3ImageSize()
    assert node.build("match input", 1024, 1024) == (None,)
    assert node.build("portrait_16_9", 0, 0)[0].dimensions == (576, 1024)
    assert node.build("custom", 640, 448)[0].to_json() == {"width": 640, "height": 448}
    with pytest.raises(ValueError, match="image_size.width=40"):
        node.build("custom", 40, 448)


def test_input_definitions_come_from_the_schema():
    inputs = FalSD3Img2Img.INPUT_TYPES()["required"]
    assert inputs["num_inference_steps"] == ("INT", {"tooltip": "Denoising steps.", "default": 28, "min": 1,
                                                     "max": 50, "step": 1})
    assert inputs["seed"][1]["control_after_generate"] is True
    assert set(NODE_CLASS_MAPPINGS) >= {"FalSD3ImageSize", "FalUploadImage", "FalSD3Img2Img"}


def _fake_comfyui(monkeypatch):
    """Stand-ins for the ComfyUI modules the nodes talk to, recording what a user would see."""
    shown = {"text": [], "bar": [], "events": []}

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total = total

        def update_absolute(self, value, total=None):
            shown["bar"].append((value, total or self.total))

    class Server:
        def send_progress_text(self, text, node_id):
            shown["text"].append(text)

        def send_sync(self, event, data):
            shown["events"].append(data)

    server_module = types.ModuleType("server")
    server_module.PromptServer = types.SimpleNamespace(instance=Server())
    utils = types.ModuleType("comfy.utils")
    utils.ProgressBar = ProgressBar
    package = types.ModuleType("comfy")
    package.utils = utils
    monkeypatch.setitem(sys.modules, "server", server_module)
    monkeypatch.setitem(sys.modules, "comfy", package)
    monkeypatch.setitem(sys.modules, "comfy.utils", utils)
    return shown
