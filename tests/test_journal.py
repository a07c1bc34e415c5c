"""The request journal: a crash, a lost answer or a re-run never pays twice or loses a result."""

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_fal_sd3.fal_core import img2img
from comfyui_fal_sd3.fal_core.errors import SubmitUncertainError
from comfyui_fal_sd3.fal_core.journal import Journal, ResultFiles, fingerprint
from comfyui_fal_sd3.nodes import comfy
from comfyui_fal_sd3.nodes.fal_img2img import FalSD3Img2Img
from emulated_client import emulated_client
from fal_emulator import expected_output

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {"prompt": "a lighthouse", "seed": 5}


def picture(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (64, 80, 3), dtype=np.uint8)


def client(emu):
    return emulated_client(emu)


def job(emu, book, params=PARAMS, **options):
    async def go():
        async with client(emu) as fal:
            return await img2img(fal, picture(), params, journal=book,
                                 result_files=ResultFiles(book.path.parent / "results"), **options)
    return asyncio.run(go())


def test_completed_request_is_reused_without_any_request(fal_emulator, tmp_path):
    book = Journal(tmp_path / "journal.jsonl")
    first = job(fal_emulator, book)
    calls = len(fal_emulator.calls())
    again = job(fal_emulator, book)
    assert len(fal_emulator.calls()) == calls  # no submit, no result, no download
    assert again.handle.request_id == first.handle.request_id
    assert np.array_equal(again.images[0], expected_output(picture(), 0, None))
    job(fal_emulator, book, force_new=True)
    assert fal_emulator.count("submit") == 2


def test_another_seed_or_picture_is_another_request(fal_emulator, tmp_path):
    book = Journal(tmp_path / "journal.jsonl")
    job(fal_emulator, book)
    job(fal_emulator, book, params={**PARAMS, "seed": 6})
    assert fal_emulator.count("submit") == 2
    assert fingerprint("a", {"seed": 1}, b"x") != fingerprint("a", {"seed": 1}, b"y")


CHILD = """
import asyncio, sys, numpy as np
sys.path.insert(0, {tests!r})
import conftest  # loads the pack as comfyui_fal_sd3
from comfyui_fal_sd3.fal_core import FalClient, img2img
from comfyui_fal_sd3.fal_core.journal import Journal
picture = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
async def main():
    async with FalClient() as fal:
        result = await img2img(fal, picture, {{"prompt": "a lighthouse", "seed": 5}}, journal=Journal({path!r}))
    np.save({out!r}, result.images[0])
asyncio.run(main())
"""


def test_killed_process_then_rerun_pays_once_and_gets_the_result(fal_emulator, tmp_path):
    fal_emulator.job_seconds = 2.0
    journal_path = str(tmp_path / "journal.jsonl")
    out = str(tmp_path / "result.npy")
    script = CHILD.format(tests=str(ROOT / "tests"), path=journal_path, out=out)
    env = {**os.environ, **fal_emulator.env()}
    victim = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=tmp_path)
    deadline = time.monotonic() + 30
    while fal_emulator.count("stream") == 0:
        assert time.monotonic() < deadline and victim.poll() is None, "the first process never got to wait"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    assert not Path(out).exists()
    states = [json.loads(line)["state"] for line in Path(journal_path).read_text().splitlines()]
    assert states == ["preparing", "sending", "pending"]

    survivor = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, timeout=60)
    assert survivor.returncode == 0
    assert fal_emulator.count("submit") == 1
    assert np.array_equal(np.load(out), expected_output(picture(), 0, None))
    assert fal_emulator.key not in Path(journal_path).read_text()


def test_lost_submit_answer_is_kept_as_unknown_and_not_paid_again(fal_emulator, tmp_path, caplog):
    book = Journal(tmp_path / "journal.jsonl")
    fal_emulator.fault("submit", drop="after")
    fal_emulator.fault("history", status=401, times=3)  # a key without access to fal's history
    with pytest.raises(SubmitUncertainError) as info:
        job(fal_emulator, book)
    assert "may have accepted" in str(info.value) and "request id never reached us" in str(info.value)
    assert fal_emulator.count("submit") == 1 and len(fal_emulator.jobs) == 1  # fal has it, we do not
    entry = book.entries()[0]
    assert entry.state == "unknown" and entry.fields["seed"] == 5 and entry.fields["prompt"] == "a lighthouse"
    assert entry.fields["image_url"].startswith("data:<sha256 ")
    assert entry.sent_at <= entry.time and entry.horizon >= 300

    with pytest.raises(SubmitUncertainError, match="force_new_request"):
        job(fal_emulator, book)
    assert fal_emulator.count("submit") == 1  # refused before any submit
    job(fal_emulator, book, force_new=True)
    assert fal_emulator.count("submit") == 2


def test_a_torn_last_line_never_swallows_the_next_record(tmp_path):
    path = tmp_path / "journal.jsonl"
    book = Journal(path)
    book.failed("first", None, "x")
    with open(path, "ab") as f:
        f.write(b'{"fingerprint":"torn","state":"pen')  # a crash mid-write
    book.cancelled("next", "r2")
    assert [e.fingerprint for e in book.entries()] == ["next", "first"]
    # A journal damaged before this rule: the record glued onto the torn line is recovered.
    path.write_bytes(b'{"fingerprint":"torn","sta' + path.read_bytes().splitlines()[-1] + b"\n")
    assert [e.fingerprint for e in book.entries()] == ["next"]


def test_short_writes_are_finished(tmp_path, monkeypatch):
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, bytes(data[:7])))  # 7 bytes at a time
    book = Journal(tmp_path / "journal.jsonl")
    book.failed("a", None, "boom" * 50)
    book.failed("b", None, "bang")
    monkeypatch.setattr(os, "write", real)
    assert {e.fingerprint: e.error for e in book.entries()} == {"a": "boom" * 50, "b": "bang"}


def test_lines_with_wrong_types_are_skipped_not_a_crash(tmp_path, caplog):
    path = tmp_path / "journal.jsonl"
    Journal(path).failed("good", "r1", "boom")
    bad = [
        {"fingerprint": 5, "state": "failed", "time": 1e12},
        {"fingerprint": "t", "state": "pending", "time": "yesterday"},
        {"fingerprint": "u", "state": "pending", "time": 1e12, "urls": ["x"]},
        {"fingerprint": "v", "state": "pending", "time": 1e12, "urls": {"status_url": 1}},
        {"fingerprint": "w", "state": "exploded", "time": 1e12},
        {"fingerprint": "x", "state": "completed", "time": 1e12, "fields": "seed=5"},
        {"fingerprint": "y", "state": "failed", "time": True},
        [1, 2, 3],
    ]
    with open(path, "a") as f:
        f.writelines(json.dumps(b) + "\n" for b in bad)
    with caplog.at_level(logging.WARNING, logger="fal_core"):
        assert [e.fingerprint for e in Journal(path).entries()] == ["good"]
    assert f"skipped {len(bad)} unreadable line" in caplog.text
    listing = subprocess.run([sys.executable, "-m", "fal_core", "--journal", str(path), "journal"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0 and "r1" in listing.stdout, listing.stderr


def test_interrupt_then_rerun_sends_a_new_request(fal_env, monkeypatch):
    fal_env.job_seconds = 30
    flag = threading.Event()
    monkeypatch.setattr(comfy, "interrupted", flag.is_set)
    image = torch.from_numpy(picture()[None]).float() / 255
    args = dict(prompt="p", negative_prompt="", prompt_expansion=False, num_inference_steps=28, seed=9,
                guidance_scale=5.0, num_images=1, enable_safety_checker=True, strength=0.9, sync_mode=False,
                image=image)
    threading.Timer(0.4, flag.set).start()
    with pytest.raises(comfy.Interrupted):
        asyncio.run(FalSD3Img2Img().run(**args))
    assert fal_env.count("cancel") == 1
    flag.clear()
    fal_env.job_seconds = 0.05
    images, *_ = asyncio.run(FalSD3Img2Img().run(**args))
    assert fal_env.count("submit") == 2 and images.shape[0] == 1
    states = [e.state for e in Journal(comfy.state_dir() / "journal.jsonl").entries()]
    assert states == ["completed"]


APPENDER = """
import sys
sys.path.insert(0, {tests!r})
import conftest
from comfyui_fal_sd3.fal_core.journal import Journal
book = Journal({path!r})
for i in range(300):
    book.failed("{who}-%d" % i, None, "x" * 3000)
"""


def test_two_processes_appending_lose_and_interleave_nothing(tmp_path):
    path = str(tmp_path / "journal.jsonl")
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER.format(tests=str(ROOT / "tests"), path=path, who=w)])
             for w in ("a", "b")]
    for proc in procs:
        assert proc.wait(60) == 0
    lines = Path(path).read_text().splitlines()
    assert len(lines) == 600
    records = [json.loads(line) for line in lines]
    assert {r["fingerprint"] for r in records} == {f"{w}-{i}" for w in "ab" for i in range(300)}


def test_corrupt_lines_are_skipped_with_a_warning_and_old_entries_pruned(tmp_path, caplog):
    path = tmp_path / "journal.jsonl"
    book = Journal(path, retention=3600)
    book.cancelled("old", "r0")
    book.failed("new", "r1", "boom")
    lines = path.read_text().splitlines()
    old = json.loads(lines[0])
    old["time"] -= 7200
    path.write_text(json.dumps(old) + "\n" + lines[1] + "\n{\"fingerprint\": \"trunc\n")
    with caplog.at_level(logging.WARNING, logger="fal_core"):
        entries = book.entries()
    assert [e.fingerprint for e in entries] == ["new"]
    assert "skipped 1 unreadable line" in caplog.text
    assert book.prune() == 1
    assert [json.loads(line)["fingerprint"] for line in path.read_text().splitlines() if line.startswith("{\"f")] \
        == ["new"]


def test_cli_lists_the_journal_and_fetches_a_result_again(fal_emulator, tmp_path):
    book = Journal(tmp_path / "journal.jsonl")
    first = job(fal_emulator, book)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("FAL_")}, **fal_emulator.env(),
           "FAL_JOURNAL": str(book.path)}
    listing = subprocess.run([sys.executable, "-m", "fal_core", "journal"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
    assert first.handle.request_id in listing.stdout and "completed" in listing.stdout
    fetched = subprocess.run([sys.executable, "-m", "fal_core", "journal", "--fetch", first.handle.request_id,
                              "-o", str(tmp_path / "again")], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=60)
    assert fetched.returncode == 0, fetched.stderr
    saved = list((tmp_path / "again").iterdir())
    assert np.array_equal(np.asarray(Image.open(saved[0])), expected_output(picture(), 0, None))
