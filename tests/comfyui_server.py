"""A real ComfyUI on the CPU with this pack linked into custom_nodes, for the tests that need one.

COMFYUI_DIR names a ComfyUI checkout (tests using it are skipped without it); COMFYUI_PYTHON the
Python that runs it (its own virtual environment, with torchvision), by default the tests' own.
"""

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import httpx
import numpy as np
import pytest
from PIL import Image

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
requires_comfyui = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "example_workflows"
PACK_FOLDER = "comfyui-fal-sd3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def example_picture() -> np.ndarray:
    """The picture the example workflows load as input/example.png."""
    return np.random.default_rng(3).integers(0, 256, (96, 128, 3), dtype=np.uint8)


@contextmanager
def running_comfyui(base: Path, env: dict[str, str], device_args: tuple[str, ...] = ("--cpu",),
                    args: Sequence[str] = ()) -> Iterator[str]:
    """Start ComfyUI with ``base`` as its base folder and ``env`` as its environment; its URL.
    ``device_args``: ComfyUI's device options (on the CPU by default; () lets it use a GPU);
    ``args``: more of its command line (``--front-end-root``)."""
    for folder in ("custom_nodes", "input", "output", "user", "models"):
        (base / folder).mkdir(exist_ok=True)
    (base / "custom_nodes" / PACK_FOLDER).symlink_to(ROOT, target_is_directory=True)
    Image.fromarray(example_picture()).save(base / "input" / "example.png")
    port = free_port()
    log_path = base / "comfyui.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [os.environ.get("COMFYUI_PYTHON", sys.executable), "main.py", *device_args, "--listen", "127.0.0.1",
             "--port", str(port), "--base-directory", str(base), "--disable-auto-launch", *args],
            cwd=COMFYUI_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_until_up(url, process, log_path)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_until_up(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(url + "/system_stats", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail("ComfyUI did not start:\n" + log_path.read_text()[-3000:])
        time.sleep(0.5)


def queue_prompt(url: str, prompt: dict, client_id: str = "tests") -> str:
    answer = httpx.post(url + "/prompt", json={"prompt": prompt, "client_id": client_id}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["prompt_id"]


def wait_history(url: str, prompt_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = httpx.get(f"{url}/history/{prompt_id}", timeout=10).json()
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            entry = history[prompt_id]
            if entry["status"]["status_str"] in ("success", "error"):
                return entry
        time.sleep(0.2)
    pytest.fail(f"prompt {prompt_id} did not finish in {timeout} s")
