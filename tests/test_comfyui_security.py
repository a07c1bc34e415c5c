"""Security where ComfyUI's own behaviour matters, on a real ComfyUI against a hostile emulator.

Skipped unless COMFYUI_DIR points at a ComfyUI checkout (see tests/comfyui_server.py).
"""

import json
from urllib.parse import quote

import httpx
import pytest

from comfyui_server import EXAMPLES, queue_prompt, requires_comfyui, wait_history
from fal_emulator import FalEmulator

pytestmark = requires_comfyui

KEY_ID = "5e6f7a8b-1c2d-4e3f-9a0b-c1d2e3f4a5b6"
KEY_SECRET = "fedcba9876543210fedcba9876543210"
KEY = f"{KEY_ID}:{KEY_SECRET}"


def leaked(text: str) -> list[str]:
    escaped = "".join(f"\\u{ord(c):04x}" for c in KEY)
    return [form for form in (KEY_ID, KEY_SECRET, quote(KEY, safe=""), escaped) if form.lower() in text.lower()]


@pytest.fixture(scope="module")
def emulator():
    with FalEmulator(key=KEY, job_seconds=0.2) as emu:
        emu.echo_key = True  # every answer echoes the Authorization header, in every form
        yield emu


def example(seed: int, **inputs) -> dict:
    """The API example with the node's response shown in the history (PreviewAny)."""
    prompt = json.loads((EXAMPLES / "api" / "sd3_img2img_fal.json").read_text())
    prompt["3"]["inputs"].update(seed=seed, **inputs)
    prompt["5"] = {"class_type": "PreviewAny", "inputs": {"source": ["3", 3]}}
    return prompt


def test_a_hostile_fal_echoing_the_key_leaves_it_in_no_history_log_output_or_journal(comfyui, emulator):
    done = wait_history(comfyui["url"], queue_prompt(comfyui["url"], example(101)))
    assert done["status"]["status_str"] == "success", json.dumps(done["status"])[:2000]
    shown = json.dumps(done["outputs"])
    assert "request_id" in shown and "Key ***" in shown  # the response output, with fal's echo redacted
    emulator.next_job(fail="out of memory")
    failed = wait_history(comfyui["url"], queue_prompt(comfyui["url"], example(102)))
    assert failed["status"]["status_str"] == "error"
    error = json.dumps(failed["status"]["messages"])
    assert "out of memory" in error and "***" in error  # fal's echo arrived, redacted
    history = httpx.get(comfyui["url"] + "/history", timeout=30).text
    saved = b"".join(p.read_bytes() for p in (comfyui["base"] / "output").rglob("*.png")).decode("latin-1")
    state = comfyui["base"] / "state"
    journal = (state / "journal.jsonl").read_text()
    log = (comfyui["base"] / "comfyui.log").read_text()
    for name, text in (("history", history), ("saved images", saved), ("journal", journal), ("ComfyUI's log", log)):
        assert not leaked(text), (name, leaked(text))


def test_dns_rebinding_is_refused_by_the_pack_on_a_real_comfyui(comfyui):
    url = comfyui["url"]
    rebind = {"Host": "rebind.attacker.example", "Origin": "http://rebind.attacker.example"}
    # ComfyUI's own origin check lets this through (Host and Origin match, Host is not loopback).
    answer = httpx.post(url + "/fal/key", json={"key": "attacker-id:attacker-secret"}, headers=rebind, timeout=10)
    assert answer.status_code == 403 and "FAL_SD3_ALLOWED_HOSTS" in answer.json()["error"]
    assert httpx.delete(url + "/fal/key", headers=rebind, timeout=10).status_code == 403
    assert not (comfyui["base"] / "state" / "fal_key").exists()
    own = {"Origin": url}
    assert httpx.get(url + "/fal/key", headers=own, timeout=10).status_code == 200


def test_a_boolean_sent_as_text_through_prompt_is_read_or_refused(comfyui, emulator):
    prompt_id = queue_prompt(comfyui["url"], example(103, sync_mode="false", enable_safety_checker="False"))
    assert wait_history(comfyui["url"], prompt_id)["status"]["status_str"] == "success"
    job = next(j for j in list(emulator.jobs.values()) if j.input.get("seed") == 103)
    assert job.input["sync_mode"] is False and job.input["enable_safety_checker"] is False
    submits = emulator.count("submit")
    refused = httpx.post(comfyui["url"] + "/prompt", json={"prompt": example(104, sync_mode="nope")}, timeout=30)
    assert refused.status_code == 400
    errors = json.dumps(refused.json()["node_errors"])
    assert "sync_mode" in errors and "'nope' is not a boolean" in errors
    assert emulator.count("submit") == submits
