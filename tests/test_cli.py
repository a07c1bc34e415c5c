"""``python -m fal_core`` run as a user would, against the emulator."""

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from fal_emulator import expected_output

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(fal_emulator, tmp_path):
    return {**fal_emulator.env(), "FAL_JOURNAL": str(tmp_path / "journal.jsonl")}


def cli(*args, env=None, cwd=ROOT):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FAL_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "fal_core", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=60)


def test_img2img_writes_result_files_and_reports_progress(fal_emulator, env, tmp_path):
    picture = np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    source = tmp_path / "in.png"
    Image.fromarray(picture).save(source)
    out = cli("img2img", str(source), "--prompt", "a cat", "--num-images", "2", "--seed", "7",
              "--image-size", "96x64", "--no-enable-safety-checker", "-o", str(tmp_path / "out"),
              env=env)
    assert out.returncode == 0, out.stderr
    paths = [Path(p) for p in out.stdout.split()]
    assert len(paths) == 2
    for k, path in enumerate(paths):
        assert np.array_equal(np.asarray(Image.open(path)), expected_output(picture, k, (96, 64)))
    assert "in progress" in out.stderr and "fal: Step" in out.stderr
    job = next(iter(fal_emulator.jobs.values()))
    assert job.input["seed"] == 7 and job.input["enable_safety_checker"] is False
    assert fal_emulator.key not in out.stdout + out.stderr


def submit_directly(emulator, source: Path) -> str:
    """A request made elsewhere (another machine, a crashed ComfyUI) that the CLI must recover."""
    data_uri = "data:image/png;base64," + base64.b64encode(source.read_bytes()).decode()
    answer = httpx.post(f"{emulator.queue_url}/fal-ai/stable-diffusion-v3-medium/image-to-image",
                        json={"image_url": data_uri, "prompt": "p"},
                        headers={"Authorization": f"Key {emulator.key}"})
    return answer.json()["request_id"]


def test_status_result_and_cancel_recover_a_request(fal_emulator, env, tmp_path):
    fal_emulator.job_seconds = 30
    source = tmp_path / "in.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(source)
    rid = submit_directly(fal_emulator, source)
    status = cli("status", rid, env=env)
    assert status.returncode == 0 and json.loads(status.stdout)["status"] in ("IN_QUEUE", "IN_PROGRESS")
    cancelled = cli("cancel", rid, env=env)
    assert cancelled.stdout.strip() == "cancellation requested"
    assert fal_emulator.count("cancel") == 1

    fal_emulator.job_seconds = 0.01
    done = submit_directly(fal_emulator, source)
    time.sleep(0.1)
    result = cli("result", done, "-o", str(tmp_path / "rec"), env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["images"]
    saved = list((tmp_path / "rec").iterdir())
    assert len(saved) == 1 and np.array_equal(np.asarray(Image.open(saved[0])), np.full((16, 16, 3), 255, np.uint8))


def test_upload_prints_urls(fal_emulator, env, tmp_path):
    blob = tmp_path / "notes.txt"
    blob.write_text("hello")
    out = cli("upload", str(blob), env=env)
    assert out.returncode == 0, out.stderr
    assert fal_emulator.files[out.stdout.strip()][0] == b"hello"


def test_bad_input_exits_2_without_network(fal_emulator, env, tmp_path):
    source = tmp_path / "in.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(source)
    out = cli("img2img", str(source), "--prompt", "x", "--strength", "2", "--num-images", "9",
              env=env)
    assert out.returncode == 2
    assert "strength=2.0: must be between 0.01 and 1" in out.stderr and "num_images=9" in out.stderr
    assert fal_emulator.calls() == []


def test_a_bad_app_id_is_a_message_and_exit_2_before_anything_is_journaled_or_sent(fal_emulator, env, tmp_path):
    source = tmp_path / "in.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(source)
    out = cli("--app-id", "bad", "img2img", str(source), "-p", "cat", env=env)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert "app_id='bad': use the form owner/alias[/path]" in out.stderr
    assert fal_emulator.calls() == []
    assert not (tmp_path / "journal.jsonl").exists()


def test_missing_key_says_how_to_set_it(tmp_path):
    source = tmp_path / "in.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(source)
    out = cli("img2img", str(source), "--prompt", "x",
              env={"FAL_QUEUE_URL": "http://127.0.0.1:9", "FAL_JOURNAL": str(tmp_path / "j.jsonl")})
    assert out.returncode == 2 and "FAL_KEY" in out.stderr
