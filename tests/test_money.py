"""Never pay twice, never lose a paid result: every fault, run three times over, costs exactly
one accepted submit (what fal would charge) and returns the right picture."""

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from comfyui_fal_sd3.fal_core import img2img, journaled
from comfyui_fal_sd3.fal_core.errors import (
    JournalError, RequestTimeout, ResultError, ResultGoneError, SubmitUncertainError,
)
from comfyui_fal_sd3.fal_core.images import encode_png
from comfyui_fal_sd3.fal_core.img2img import encode_image
from comfyui_fal_sd3.fal_core.journal import Journal, fingerprint
from comfyui_fal_sd3.fal_core.schema import ENDPOINT
from comfyui_fal_sd3.nodes import comfy
from comfyui_fal_sd3.nodes.fal_img2img import FalSD3Img2Img
from emulated_client import emulated_client
from fal_emulator import expected_output
from test_fal_nodes import _fake_comfyui

PARAMS = {"prompt": "a lighthouse", "seed": 5}
RUNS = 3
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def quick_history(monkeypatch):
    monkeypatch.setattr(journaled, "HISTORY_POLL", 0.05)
    monkeypatch.setattr(journaled, "HISTORY_POLL_MAX", 0.2)


def picture(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (64, 72, 3), dtype=np.uint8)


def client(emu):
    return emulated_client(emu)


def job(emu, book, params=PARAMS, **options):
    async def go():
        async with client(emu) as fal:
            return await img2img(fal, picture(), params, journal=book, **options)
    return asyncio.run(go())


def right(result):
    return np.array_equal(result.images[0], expected_output(picture(), 0, None))


# (name, faults before the first run [(kind, options)], emulator settings)
ONE_RUN_FAULTS = [
    ("submit accepted, answer lost", [("submit", dict(drop="after"))]),
    ("2xx without request_id, with the header", [("submit", dict(hide_request_id=True, request_id_header=True))]),
    ("2xx without request_id or header", [("submit", dict(hide_request_id=True))]),
    ("503 with a request id", [("submit", dict(status=503, request_id_header=True))]),
    ("502 from nginx", [("submit", dict(status=502, times=2))]),
    ("429", [("submit", dict(status=429, retry_after=0.05))]),
    ("504 after accepting", [("submit", dict(status=504, accept=True))]),
    ("524 after accepting", [("submit", dict(status=524, accept=True, body="A timeout occurred"))]),
    ("500 after accepting", [("submit", dict(status=500, accept=True, request_id_header=True))]),
    ("read timeout after accepting", [("submit", dict(delay=1.5, accept=True))]),
    ("result 5xx after COMPLETED, for good", [("result", dict(status=500, request_id_header=True, times=9))]),
    ("result 504 marked as the caller's timeout", [("result", dict(
        status=504, request_id_header=True, headers={"X-Fal-Request-Timeout-Type": "user"}))]),
    ("result gone (404) after COMPLETED", [("result", dict(status=404, request_id_header=True, times=9))]),
    ("result download dropped", [("file", dict(drop="before"))]),
]


@pytest.mark.parametrize("faults", [f for _, f in ONE_RUN_FAULTS], ids=[n for n, _ in ONE_RUN_FAULTS])
def test_each_fault_costs_one_submit_over_repeated_runs(fal_emulator, tmp_path, faults):
    book = Journal(tmp_path / "journal.jsonl")
    for kind, options in faults:
        fal_emulator.fault(kind, **options)
    timeout = 1.0 if any(o.get("delay") for _, o in faults) else None
    results = []
    for _ in range(RUNS):
        async def go():
            # A 1 s read timeout turns the slow submit into a lost answer.
            async with emulated_client(fal_emulator, timeout=timeout or 60.0) as fal:
                return await img2img(fal, picture(), PARAMS, journal=book)
        results.append(asyncio.run(go()))
    assert fal_emulator.accepted() == 1
    assert all(right(r) for r in results)
    assert len({r.handle.request_id for r in results}) == 1
    assert book.entries()[0].state == "completed"


def test_lost_answer_is_found_in_the_history_and_shown(fal_emulator, tmp_path):
    fal_emulator.fault("submit", drop="after")
    phases = []
    result = job(fal_emulator, Journal(tmp_path / "journal.jsonl"), on_update=lambda u: phases.append(u.phase))
    assert right(result) and fal_emulator.accepted() == 1
    assert "checking_history" in phases and phases.index("checking_history") < phases.index("downloading")
    history = fal_emulator.calls("history")
    assert history and history[0].query["endpoint_id"] == "fal-ai/stable-diffusion-v3-medium/image-to-image"
    assert history[0].query["expand"] == "payloads"
    assert history[0].headers["authorization"] == f"Key {fal_emulator.key}"


def test_history_pages_are_followed(fal_emulator, tmp_path):
    # 130 other requests of the endpoint ended before ours: ours is on the second page.
    async def others():
        async with client(fal_emulator) as fal:
            url = await fal.storage.upload(encode_png(picture(1)), "image/png")
            await asyncio.gather(*(fal.queue.submit(ENDPOINT, {"prompt": f"other {i}", "image_url": url})
                                   for i in range(130)))
    fal_emulator.job_seconds = 0.0
    asyncio.run(others())
    fal_emulator.job_seconds = 0.2
    fal_emulator.fault("submit", drop="after")
    result = job(fal_emulator, Journal(tmp_path / "journal.jsonl"))
    assert right(result) and fal_emulator.accepted() == 131
    assert any(c.query.get("cursor") for c in fal_emulator.calls("history"))


def test_two_identical_requests_in_the_history_are_neither_taken(fal_emulator, tmp_path):
    job(fal_emulator, Journal(tmp_path / "other-machine.jsonl"))  # the same job, from another journal
    book = Journal(tmp_path / "journal.jsonl")
    fal_emulator.job_seconds = 0.0  # ours has ended too by the first look
    fal_emulator.fault("submit", drop="after")
    with pytest.raises(SubmitUncertainError, match="holds 2 requests with this very input") as info:
        job(fal_emulator, book)
    assert all(job_id in str(info.value) for job_id in fal_emulator.jobs)
    for _ in range(2):
        with pytest.raises(SubmitUncertainError, match="neither was taken"):
            job(fal_emulator, book)
    assert fal_emulator.accepted() == 2  # nothing more was sent
    assert right(job(fal_emulator, book, force_new=True)) and fal_emulator.accepted() == 3


def test_history_refused_keeps_todays_refusal_with_the_reason(fal_emulator, tmp_path):
    book = Journal(tmp_path / "journal.jsonl")
    fal_emulator.fault("submit", drop="after")
    fal_emulator.fault("history", status=403, times=RUNS, body={"detail": "Forbidden"})
    for _ in range(RUNS):
        with pytest.raises(SubmitUncertainError) as info:
            job(fal_emulator, book)
        assert "HTTP 403" in str(info.value) and "Platform API" in str(info.value)
        assert "dashboard/requests" in str(info.value)
    assert fal_emulator.accepted() == 1 and fal_emulator.count("submit") == 1


def test_not_in_the_history_within_the_horizon_is_sent_again_once(fal_emulator, tmp_path, monkeypatch):
    monkeypatch.setattr(journaled, "MIN_HORIZON", 0.5)
    book = Journal(tmp_path / "journal.jsonl")
    fal_emulator.fault("submit", drop="before")  # fal never read it
    start = time.monotonic()
    with pytest.raises(SubmitUncertainError, match="does not list it yet") as info:
        job(fal_emulator, book, timeout=1.0)
    assert time.monotonic() - start < 2.0  # bounded by the job's timeout
    assert "sends it anew" in str(info.value)
    assert fal_emulator.accepted() == 0 and fal_emulator.count("submit") == 1
    time.sleep(0.3)  # the horizon (1 s, the job's timeout) has passed
    results = [job(fal_emulator, book, timeout=1.0) for _ in range(RUNS)]
    assert all(right(r) for r in results)
    assert fal_emulator.accepted() == 1 and fal_emulator.count("submit") == 2


FULL_DISK = """
import asyncio, resource, signal, sys
import numpy as np
sys.path.insert(0, {tests!r})
import conftest
from comfyui_fal_sd3.fal_core import FalClient, img2img
from comfyui_fal_sd3.fal_core.errors import JournalError
from comfyui_fal_sd3.fal_core.journal import Journal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # no file may grow: a full disk
picture = np.random.default_rng(0).integers(0, 256, (64, 72, 3), dtype=np.uint8)
async def main():
    async with FalClient() as fal:
        await img2img(fal, picture, {{"prompt": "a lighthouse", "seed": 5}}, journal=Journal({path!r}))
try:
    asyncio.run(main())
except JournalError as exc:
    print(exc)
"""


def test_full_disk_fails_before_any_network_call(fal_emulator, tmp_path):
    path = tmp_path / "journal.jsonl"
    script = FULL_DISK.format(tests=str(Path(__file__).parent), path=str(path))
    env = {**os.environ, **fal_emulator.env()}
    for _ in range(RUNS):
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
        assert str(path) in out.stdout and "File too large" in out.stdout, out.stderr
        assert "FAL_JOURNAL" in out.stdout
    assert fal_emulator.calls() == []


def test_unwritable_or_odd_journal_fails_before_any_network_call(fal_emulator, tmp_path):
    blocked = tmp_path / "a-file" / "journal.jsonl"
    blocked.parent.write_text("not a folder")
    device = tmp_path / "journal-on-a-device.jsonl"
    device.symlink_to("/dev/zero")
    for path, cause in ((blocked, "Not a directory"), (device, "not a regular file")):
        for _ in range(RUNS):
            with pytest.raises(JournalError) as info:
                job(fal_emulator, Journal(path))
            assert str(path) in str(info.value) and cause in str(info.value)
            assert "FAL_JOURNAL" in str(info.value)
    assert fal_emulator.calls() == []


def test_journal_failing_after_the_submit_still_pays_once(fal_emulator, tmp_path, monkeypatch):
    book = Journal(tmp_path / "journal.jsonl")
    real = Journal._append

    def disk_full_after_sending(self, fp, state, **facts):
        if state not in ("preparing", "sending"):
            raise JournalError(self.path, "written", "No space left on device", "")
        return real(self, fp, state, **facts)

    monkeypatch.setattr(Journal, "_append", disk_full_after_sending)
    assert right(job(fal_emulator, book))  # paid, so returned despite the disk
    monkeypatch.setattr(Journal, "_append", real)
    assert book.entries()[0].state == "sending"
    results = [job(fal_emulator, book) for _ in range(RUNS)]
    assert all(right(r) for r in results) and fal_emulator.accepted() == 1


def test_cancel_too_late_on_timeout_returns_the_paid_result(fal_emulator, tmp_path):
    fal_emulator.job_seconds = 5
    fal_emulator.fault("cancel", complete=True)
    book = Journal(tmp_path / "journal.jsonl")
    result = job(fal_emulator, book, timeout=0.5)
    assert right(result) and fal_emulator.count("cancel") == 1
    assert book.entries()[0].state == "completed"
    assert all(right(job(fal_emulator, book, timeout=0.5)) for _ in range(RUNS - 1))
    assert fal_emulator.accepted() == 1


def test_cancel_too_late_on_stop_keeps_the_result_for_a_rerun(fal_emulator, tmp_path):
    fal_emulator.job_seconds = 5
    fal_emulator.fault("cancel", complete=True)
    book = Journal(tmp_path / "journal.jsonl")

    async def stopped():  # as the node stops on ComfyUI's Cancel: the task is cancelled
        async with client(fal_emulator) as fal:
            task = asyncio.ensure_future(img2img(fal, picture(), PARAMS, journal=book))
            await asyncio.sleep(0.4)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(stopped())
    assert book.entries()[0].state == "completed"
    calls = len(fal_emulator.calls())
    assert right(job(fal_emulator, book))
    assert len(fal_emulator.calls()) == calls + 1  # the result's download only
    assert fal_emulator.accepted() == 1


def test_result_failing_for_good_ends_the_entry_with_the_reason(fal_emulator, tmp_path):
    book = Journal(tmp_path / "journal.jsonl")
    fal_emulator.fault("result", status=500, request_id_header=True, times=9)
    fal_emulator.fault("history", status=403, times=9)  # and the history cannot stand in
    with pytest.raises(ResultError, match="could not be fetched"):
        job(fal_emulator, book)
    entry = book.entries()[0]
    assert entry.state == "failed" and "HTTP 500" in entry.error
    fal_emulator.reset()
    assert right(job(fal_emulator, book))  # a new request, not the failed one again
    assert fal_emulator.count("stream") == 1 and fal_emulator.accepted() == 1


def crashed_after_submit(emu, book):
    """What a run that died right after its submit leaves: a pending entry, and fal's request."""
    async def go():
        async with client(emu) as fal:
            encoded = await encode_image(picture())
            fp = fingerprint(ENDPOINT, dict(PARAMS), encoded[0])
            payload = {**PARAMS, "image_url": await fal.storage.image_url(*encoded)}
            handle = await fal.queue.submit(ENDPOINT, payload)
            book.submitted(fp, handle, payload)
            return handle
    return asyncio.run(go())


def test_result_gone_on_reattach_comes_from_the_history(fal_emulator, tmp_path):
    fal_emulator.job_seconds = 0.05
    book = Journal(tmp_path / "journal.jsonl")
    handle = crashed_after_submit(fal_emulator, book)
    time.sleep(0.2)
    fal_emulator.expire()  # past fal's retention: the queue answers 404
    results = [job(fal_emulator, book) for _ in range(RUNS)]
    assert all(right(r) for r in results) and results[0].handle.request_id == handle.request_id
    assert fal_emulator.accepted() == 1


def test_cancelled_request_that_finished_anyway_is_reused(fal_emulator, tmp_path):
    fal_emulator.job_seconds = 2.5
    book = Journal(tmp_path / "journal.jsonl")
    fal_emulator.fault("cancel", status=500, request_id_header=True, times=3)  # the cancel never lands
    with pytest.raises(RequestTimeout):
        job(fal_emulator, book, timeout=0.3)
    assert book.entries()[0].state == "cancelled"
    time.sleep(2.5)
    assert right(job(fal_emulator, book))
    fal_emulator.expire()  # and once fal's queue forgot it, its history still tells
    book.cancelled(book.entries()[0].fingerprint, book.entries()[0].request_id)
    assert right(job(fal_emulator, book))
    assert fal_emulator.accepted() == 1


def test_result_gone_without_history_is_never_paid_again_silently(fal_emulator, tmp_path):
    fal_emulator.job_seconds = 0.05
    book = Journal(tmp_path / "journal.jsonl")
    handle = crashed_after_submit(fal_emulator, book)
    time.sleep(0.2)
    fal_emulator.expire()
    fal_emulator.fault("history", status=403, times=9)
    for _ in range(RUNS):
        with pytest.raises(ResultGoneError) as info:
            job(fal_emulator, book)
        assert handle.request_id in str(info.value) and "force_new_request" in str(info.value)
        assert "6 min" in str(info.value)
    assert fal_emulator.accepted() == 1
    assert book.entries()[0].state == "gone"
    assert right(job(fal_emulator, book, force_new=True)) and fal_emulator.accepted() == 2


def test_one_deadline_bounds_a_slow_download_and_the_rerun_reuses_the_result(fal_emulator, tmp_path):
    book = Journal(tmp_path / "journal.jsonl")
    fal_emulator.fault("file", delay=5.0)
    start = time.monotonic()
    with pytest.raises(RequestTimeout, match="download of the results"):
        job(fal_emulator, book, timeout=1.0)
    assert time.monotonic() - start < 1.6
    assert right(job(fal_emulator, book, timeout=1.0))
    assert fal_emulator.accepted() == 1


def test_one_deadline_bounds_a_slow_result_and_the_rerun_fetches_it(fal_emulator, tmp_path):
    book = Journal(tmp_path / "journal.jsonl")
    fal_emulator.fault("result", delay=5.0)
    fal_emulator.fault("history", status=403)
    start = time.monotonic()
    with pytest.raises(RequestTimeout, match="fetch of the result .* a re-run fetches it without paying"):
        job(fal_emulator, book, timeout=1.0)
    assert time.monotonic() - start < 1.6
    assert book.entries()[0].state == "pending" and fal_emulator.count("cancel") == 0
    assert right(job(fal_emulator, book, timeout=1.0))
    assert fal_emulator.accepted() == 1
    # With fal's history readable, the timed-out fetch is answered from there at once.
    fal_emulator.fault("result", delay=5.0)
    assert right(job(fal_emulator, book, timeout=1.0, force_new=True)) and fal_emulator.accepted() == 2


def test_sync_mode_results_live_in_files_not_in_the_journal(fal_emulator, tmp_path):
    book = Journal(tmp_path / "journal.jsonl")
    params = {**PARAMS, "sync_mode": True}
    first = job(fal_emulator, book, params=params)
    text = book.path.read_text()
    assert "base64" not in text and "fal-result-file:" in text
    assert len(text) < 4000
    calls = len(fal_emulator.calls())
    again = job(fal_emulator, book, params=params)
    assert len(fal_emulator.calls()) == calls and right(again) and right(first)


def test_cli_resolves_lost_submits_once_the_history_answers(fal_emulator, tmp_path):
    book = Journal(tmp_path / "journal.jsonl")
    fal_emulator.fault("submit", drop="after")
    fal_emulator.fault("history", status=503, times=99)
    with pytest.raises(SubmitUncertainError, match="does not list it yet"):
        job(fal_emulator, book, timeout=0.5)
    fal_emulator.clear_faults()  # fal's history answers again
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("FAL_")}, **fal_emulator.env(),
           "FAL_JOURNAL": str(book.path)}
    listing = subprocess.run([sys.executable, "-m", "fal_core", "journal"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
    assert "unknown" in listing.stdout and "(no id: answer lost)" in listing.stdout
    out = subprocess.run([sys.executable, "-m", "fal_core", "journal", "--resolve"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    request_id = book.entries()[0].request_id
    assert f"found: request {request_id}" in out.stdout and book.entries()[0].state == "completed"
    calls = len(fal_emulator.calls())
    assert right(job(fal_emulator, book)) and fal_emulator.count("submit") == 1
    assert len(fal_emulator.calls()) == calls + 1  # its download only


# --- through the node -------------------------------------------------------------------------

NODE = dict(prompt="p", negative_prompt="", prompt_expansion=False, num_inference_steps=28, seed=9,
            guidance_scale=5.0, num_images=1, enable_safety_checker=True, strength=0.9, sync_mode=False)
NODE_FAULTS = [
    ("submit accepted, answer lost", [("submit", dict(drop="after"))], {}),
    ("2xx without request_id or header", [("submit", dict(hide_request_id=True))], {}),
    ("504 after accepting", [("submit", dict(status=504, accept=True))], {}),
    ("cancel racing completion at the timeout", [("cancel", dict(complete=True))], {"job_seconds": 5, "timeout": 1}),
    ("result gone (404) after COMPLETED", [("result", dict(status=404, request_id_header=True, times=9))], {}),
    ("result 5xx after COMPLETED, for good", [("result", dict(status=500, request_id_header=True, times=9))], {}),
    ("sync_mode result", [], {"sync_mode": True}),
]


@pytest.mark.parametrize("faults, setting", [(f, s) for _, f, s in NODE_FAULTS], ids=[n for n, _, _ in NODE_FAULTS])
def test_through_the_node_each_fault_costs_one_submit(fal_env, monkeypatch, faults, setting):
    shown = _fake_comfyui(monkeypatch)
    setting = dict(setting)
    fal_env.job_seconds = setting.pop("job_seconds", 0.2)
    for kind, options in faults:
        fal_env.fault(kind, **options)
    image = torch.from_numpy(picture()[None]).float() / 255
    for _ in range(RUNS):
        images, *_ = asyncio.run(FalSD3Img2Img().run(**{**NODE, **setting}, image=image, unique_id="3"))
        assert np.array_equal((images[0] * 255).round().to(torch.uint8).numpy(), expected_output(picture(), 0, None))
    assert fal_env.accepted() == 1
    if faults and faults[0][0] == "submit":
        # The front end draws this phase as "submit answer lost, checking fal's request history…".
        assert any(item["phase"] == "checking_history" for event in shown["events"] for item in event["items"])
    journal = Path(os.environ["FAL_SD3_STATE_DIR"]) / "journal.jsonl"
    assert "base64" not in journal.read_text()


def test_through_the_node_an_unwritable_journal_sends_nothing(fal_env, monkeypatch, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("FAL_JOURNAL", str(tmp_path / "a-file" / "journal.jsonl"))
    image = torch.from_numpy(picture()[None]).float() / 255
    for _ in range(RUNS):
        with pytest.raises(JournalError, match="Not a directory"):
            asyncio.run(FalSD3Img2Img().run(**NODE, image=image))
    assert fal_env.count("submit") == 0 and fal_env.count("upload") == 0


def test_through_the_node_interrupt_after_completion_keeps_the_result(fal_env, monkeypatch):
    import threading
    fal_env.job_seconds = 5
    fal_env.fault("cancel", complete=True)
    flag = threading.Event()
    monkeypatch.setattr(comfy, "interrupted", flag.is_set)
    threading.Timer(0.5, flag.set).start()
    image = torch.from_numpy(picture()[None]).float() / 255
    with pytest.raises(comfy.Interrupted):
        asyncio.run(FalSD3Img2Img().run(**NODE, image=image))
    flag.clear()
    images, *_ = asyncio.run(FalSD3Img2Img().run(**NODE, image=image))
    assert np.array_equal((images[0] * 255).round().to(torch.uint8).numpy(), expected_output(picture(), 0, None))
    assert fal_env.accepted() == 1 and fal_env.count("stream") == 1
    states = [json.loads(line)["state"] for line in
              (Path(os.environ["FAL_SD3_STATE_DIR"]) / "journal.jsonl").read_text().splitlines()]
    assert states[-1] == "completed" and "cancelled" not in states


def test_through_the_node_a_torn_journal_line_and_a_slow_download_cost_one_submit(fal_env):
    journal = Path(os.environ["FAL_SD3_STATE_DIR"]) / "journal.jsonl"
    journal.parent.mkdir(parents=True)
    journal.write_bytes(b'{"fingerprint":"crashed","state":"pen')  # a crash mid-write
    fal_env.fault("file", delay=5.0)
    image = torch.from_numpy(picture()[None]).float() / 255
    start = time.monotonic()
    with pytest.raises(RequestTimeout, match="download of the results"):
        asyncio.run(FalSD3Img2Img().run(**NODE, image=image, timeout=1))
    assert time.monotonic() - start < 1.8
    for _ in range(RUNS):
        images, *_ = asyncio.run(FalSD3Img2Img().run(**NODE, image=image, timeout=1))
        assert np.array_equal((images[0] * 255).round().to(torch.uint8).numpy(), expected_output(picture(), 0, None))
    assert fal_env.accepted() == 1
