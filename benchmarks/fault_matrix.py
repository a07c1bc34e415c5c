"""The fal node's whole path (encode, upload, submit, follow, download) against each emulator fault,
each row run three times over with the same inputs and state folder, as a user re-runs a prompt.

Per row: what each run returned, submits fal accepted and requests it would bill (a successful
output; failed requests are not billed), and the first run's seconds. Targets: a "recovers" row
bills exactly one request over the three runs, returns no wrong picture and ends with the right
one; a "refused" row returns no picture and never sends a second submit; a "fails" row returns no
picture and bills nothing.
Run: python benchmarks/fault_matrix.py
"""

import asyncio
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _pack import ROOT, SHARED_IMAGES, load_pack

load_pack()
sys.path.insert(0, str(ROOT / "tests"))  # the emulator lives with the tests
from comfyui_fal_sd3.fal_core import journaled  # noqa: E402
from comfyui_fal_sd3.nodes.fal_img2img import FalSD3Img2Img  # noqa: E402
from comfyui_fal_sd3.fal_core.schema import ENDPOINT  # noqa: E402
from fal_emulator import FalEmulator, expected_output  # noqa: E402

JOB_SECONDS = 0.3
PARAMS = dict(prompt="a watercolor", negative_prompt="", prompt_expansion=False, num_inference_steps=28, seed=3,
              guidance_scale=5.0, num_images=1, enable_safety_checker=True, strength=0.8, sync_mode=False)

RUNS = 3
TIMEOUT = 5  # the node's timeout in every row
# fal's history must list an accepted request this long after it was sent (the pack's floor is
# 5 minutes; shortened so the "not accepted" rows finish): the timeout's 5 s apply.
journaled.MIN_HORIZON = 3.0
RECOVERS, REFUSED, FAILS = "recovers", "refused", "fails"
# The table shows what each run returned; fal_core's warnings (a skipped torn line) would break it.
logging.getLogger("fal_core").setLevel(logging.ERROR)


def torn_journal(emu, state):
    Path(state, "journal.jsonl").write_bytes(b'{"fingerprint":"crashed","state":"pen')


def unwritable_journal(emu, state):
    Path(state, "a-file").write_text("not a folder")
    os.environ["FAL_JOURNAL"] = str(Path(state, "a-file", "journal.jsonl"))


# (name, kind, faults [(kind, options)], extra node inputs, setup(emulator, state folder))
MATRIX = [
    ("no fault", RECOVERS, [], {}, None),
    ("429 burst on submit (Retry-After)", RECOVERS, [("submit", dict(status=429, retry_after=0.2, times=3))], {}, None),
    ("503 with a request id on submit", RECOVERS, [("submit", dict(status=503, request_id_header=True))], {}, None),
    ("502 from the ingress on submit", RECOVERS, [("submit", dict(status=502, times=2))], {}, None),
    ("submit answer lost (fal accepted)", RECOVERS, [("submit", dict(drop="after"))], {}, None),
    ("2xx without request_id, header kept", RECOVERS,
     [("submit", dict(hide_request_id=True, request_id_header=True))], {}, None),
    ("2xx without request_id or header", RECOVERS, [("submit", dict(hide_request_id=True))], {}, None),
    ("504 gateway timeout after accepting", RECOVERS, [("submit", dict(status=504, accept=True))], {}, None),
    ("524 after accepting", RECOVERS, [("submit", dict(status=524, accept=True, body="A timeout occurred"))], {}, None),
    ("500 from the app after accepting", RECOVERS,
     [("submit", dict(status=500, accept=True, request_id_header=True))], {}, None),
    ("500 before accepting", RECOVERS, [("submit", dict(status=500, request_id_header=True))], {}, None),
    ("submit dropped before fal read it", RECOVERS, [("submit", dict(drop="before"))], {}, None),
    ("answer lost, history refused (403)", REFUSED,
     [("submit", dict(drop="after")), ("history", dict(status=403, times=99))], {}, None),
    ("status stream refused", RECOVERS, [("stream", dict(refuse=True))], {}, None),
    ("status stream dropped", RECOVERS, [("stream", dict(drop_mid=True, times=2))], {}, None),
    ("stream refused + 5xx on status", RECOVERS,
     [("stream", dict(refuse=True)), ("status", dict(status=502, times=2))], {}, None),
    ("cancel racing completion at the timeout", RECOVERS, [("cancel", dict(complete=True))], {},
     lambda emu, state: emu.next_job(job_seconds=TIMEOUT + 2)),
    ("429 on result", RECOVERS, [("result", dict(status=429, retry_after=0.1))], {}, None),
    ("5xx on result once", RECOVERS, [("result", dict(status=500, request_id_header=True))], {}, None),
    ("5xx on result after COMPLETED, for good", RECOVERS,
     [("result", dict(status=500, request_id_header=True, times=99))], {}, None),
    ("504 user timeout on result", RECOVERS, [("result", dict(
        status=504, request_id_header=True, headers={"X-Fal-Request-Timeout-Type": "user"}))], {}, None),
    ("result gone (404) after COMPLETED", RECOVERS,
     [("result", dict(status=404, request_id_header=True, times=99))], {}, None),
    ("result connection dropped", RECOVERS, [("result", dict(drop="before"))], {}, None),
    ("slow result (2 s)", RECOVERS, [("result", dict(delay=2.0))], {}, None),
    ("slow download past the timeout (8 s)", RECOVERS, [("file", dict(delay=8.0))], {}, None),
    ("CDN upload 5xx: fallback upload", RECOVERS,
     [("upload", dict(status=500, request_id_header=True, times=6))], {}, None),
    ("result image download dropped", RECOVERS, [("file", dict(drop="before"))], {}, None),
    ("sync_mode (inline images)", RECOVERS, [], {"sync_mode": True}, None),
    ("torn last journal line", RECOVERS, [], {}, torn_journal),
    ("journal unwritable", FAILS, [], {}, unwritable_journal),
    ("COMPLETED with error", FAILS, [], {}, lambda emu, state: [emu.next_job(fail="CUDA out of memory",
                                                                             error_type="RuntimeError")
                                                                for _ in range(RUNS)]),
    ("401: key refused", FAILS, [], {}, lambda emu, state: os.environ.__setitem__("FAL_KEY", "wrong:key")),
    ("422: fal rejects the input", FAILS, [], {"image": None, "image_url": "https://elsewhere.example/x.png"}, None),
]


def picture() -> np.ndarray:
    files = sorted(SHARED_IMAGES.glob("*.webp"))
    return np.array(Image.open(files[0]).convert("RGB"))


def run_once(pixels: np.ndarray, extra) -> str:
    inputs = {**PARAMS, "image": torch.from_numpy(pixels[None]).float() / 255, "timeout": TIMEOUT, **extra}
    try:
        images, *_ = asyncio.run(FalSD3Img2Img().run(**inputs))
    except Exception as exc:  # the row reports whatever the user would see
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:60]}"
    got = (images[0] * 255).round().to(torch.uint8).numpy()
    return "right" if np.array_equal(got, expected_output(pixels, 0, None)) else "WRONG"


def run_row(pixels: np.ndarray, faults, extra, setup) -> tuple[list[str], int, int, float]:
    with FalEmulator(job_seconds=JOB_SECONDS) as emu, tempfile.TemporaryDirectory() as state:
        os.environ.update(emu.env(), FAL_SD3_STATE_DIR=state)
        for kind, options in faults:
            emu.fault(kind, **options)
        if setup:
            setup(emu, state)
        start = time.perf_counter()
        outcomes = [run_once(pixels, extra)]
        seconds = time.perf_counter() - start
        outcomes += [run_once(pixels, extra) for _ in range(RUNS - 1)]
        time.sleep(JOB_SECONDS + 0.2)  # a request still running when the runs ended is billed once it ends
        now = time.time()
        billed = sum(job.history_code() == 200 and job.ended_at() <= now for job in emu.jobs.values())
        return outcomes, len(emu.jobs), billed, seconds


def meets(kind: str, outcomes: list[str], accepted: int, billed: int) -> bool:
    if kind == RECOVERS:
        return billed == 1 and accepted == 1 and outcomes[-1] == "right" and "WRONG" not in outcomes
    if kind == REFUSED:
        return "right" not in outcomes and accepted <= 1
    return "right" not in outcomes and billed == 0


def main() -> int:
    pixels = picture()
    print(f"SD3 Img2Img (fal), one 1024x1024 picture, {JOB_SECONDS} s job on the emulator, node timeout "
          f"{TIMEOUT} s, {RUNS} identical runs per row (history horizon shortened to {journaled.MIN_HORIZON:g} s)\n")
    print(f"{'fault':<42}{'kind':<10}{'accepted':>9}{'billed':>7}{'1st s':>7}  runs")
    met = True
    for name, kind, faults, extra, setup in MATRIX:
        saved = {k: os.environ.get(k) for k in ("FAL_KEY", "FAL_JOURNAL")}
        outcomes, accepted, billed, seconds = run_row(pixels, faults, extra, setup)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        ok = meets(kind, outcomes, accepted, billed)
        met &= ok
        note = "" if ok else "  <-- target missed"
        shown = " | ".join(dict.fromkeys(outcomes)) if len(set(outcomes)) == 1 else " | ".join(outcomes)
        print(f"{name:<42}{kind:<10}{accepted:>9}{billed:>7}{seconds:7.2f}  {shown}{note}")
    print(f"\nall rows meet the target: {met}")
    compare_fal_client(pixels)
    return 0


# The submit faults, for fal's own Python client, run as a user would: again after an error, up to
# RUNS times, until a result comes back.
SUBMIT_FAULTS = [row for row in MATRIX if row[2] and row[2][0][0] == "submit" and row[1] == RECOVERS]


def compare_fal_client(pixels: np.ndarray) -> None:
    try:
        import fal_client
        import fal_client.client as internals
    except ImportError:
        print("\n(fal-client is not installed: pip install fal-client for its column)")
        return
    from comfyui_fal_sd3.fal_core.images import encode_png, to_data_uri

    arguments = {"image_url": to_data_uri(encode_png(pixels), "image/png"), "prompt": PARAMS["prompt"],
                 "seed": PARAMS["seed"]}
    print(f"\nThe submit faults again, each run until a result comes back (at most {RUNS} runs): submits fal "
          "accepted\n")
    print(f"{'fault':<42}{'fal_core':>9}{'fal-client ' + fal_client.__version__:>18}  fal-client's first run")
    for name, _, faults, _, _ in SUBMIT_FAULTS:
        with FalEmulator(job_seconds=JOB_SECONDS) as emu:
            internals.QUEUE_URL_FORMAT = emu.queue_url + "/"  # its hosts are fixed to https://queue.fal.run
            for kind, options in faults:
                emu.fault(kind, **options)
            outcomes = []
            for _ in range(RUNS):
                async def once():
                    client = fal_client.AsyncClient(key=emu.key)
                    return await asyncio.wait_for(client.subscribe(ENDPOINT, arguments=arguments), TIMEOUT * 4)
                try:
                    asyncio.run(once())
                    outcomes.append("result")
                    break
                except Exception as exc:  # whatever its user would see
                    outcomes.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:40] if str(exc) else ''}")
            print(f"{name:<42}{1:>9}{emu.accepted():>18}  {outcomes[0]}")


if __name__ == "__main__":
    sys.exit(main())
