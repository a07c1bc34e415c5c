"""Queue overhead: the time a client adds around a fal job, and the requests it spends on it.

On the emulator (tests/fal_emulator.py) with a 1.0 s job, median (wall - 1.0 s) over several
runs for fal_core (status stream) and for the official fal-client with its defaults (polling
every 0.1 s), in one run. Target: ours <= 0.3x fal-client's overhead, <= 5 requests per job.

fal-client is for this benchmark only: pip install fal-client (skipped when absent).
Run: python benchmarks/queue_overhead.py [runs]
"""

import asyncio
import base64
import io
import statistics
import sys
import time

import numpy as np
from PIL import Image

from _pack import ROOT, load_pack

load_pack()
sys.path.insert(0, str(ROOT / "tests"))  # the emulator lives with the tests
from comfyui_fal_sd3.fal_core import FalClient  # noqa: E402
from comfyui_fal_sd3.fal_core.schema import ENDPOINT  # noqa: E402
from fal_emulator import FalEmulator  # noqa: E402

JOB_SECONDS = 1.0


def payload() -> dict:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return {"image_url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(), "prompt": "a cat"}


async def fal_core_jobs(emu: FalEmulator, runs: int) -> list[tuple[float, int]]:
    async with FalClient(key=emu.key, queue_url=emu.queue_url, rest_url=emu.rest_url, cdn_url=emu.cdn_url) as fal:
        return [await timed(emu, fal.queue.subscribe(ENDPOINT, payload())) for _ in range(runs)]


async def fal_client_jobs(emu: FalEmulator, runs: int) -> list[tuple[float, int]]:
    import os

    import fal_client
    import fal_client.client as internals

    internals.QUEUE_URL_FORMAT = emu.queue_url + "/"  # its hosts are fixed to https://queue.fal.run
    os.environ["FAL_KEY"] = emu.key
    # The module-level function: fal-client's default, one shared client, polling every 0.1 s.
    return [await timed(emu, fal_client.subscribe_async(ENDPOINT, arguments=payload())) for _ in range(runs)]


async def timed(emu: FalEmulator, job) -> tuple[float, int]:
    emu.reset()
    start = time.perf_counter()
    await job
    return time.perf_counter() - start - JOB_SECONDS, len(emu.calls())


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    clients = [("fal_core", fal_core_jobs)]
    try:
        import fal_client
        clients.append((f"fal-client {fal_client.__version__}", fal_client_jobs))
    except ImportError:
        print("fal-client is not installed (pip install fal-client): measuring fal_core only\n")
    results = {}
    with FalEmulator(job_seconds=JOB_SECONDS) as emu:
        for name, jobs in clients:
            # The first job also pays for the client, its TLS context and its first connection.
            first, *rest = asyncio.run(jobs(emu, runs + 1))
            results[name] = (first[0], statistics.median(o for o, _ in rest), statistics.median(r for _, r in rest))
    print(f"job {JOB_SECONDS:.1f} s on the emulator; median of {runs} jobs on a warm client, and the first job")
    print(f"{'client':<20}{'overhead ms':>12}{'first job ms':>14}{'requests/job':>14}")
    for name, (first, overhead, requests) in results.items():
        print(f"{name:<20}{overhead * 1000:12.1f}{first * 1000:14.1f}{requests:14.0f}")
    if len(results) == 2:
        (_, ours, _), (_, theirs, _) = results.values()
        print(f"\nfal_core overhead / fal-client overhead = {ours / theirs:.2f} (target <= 0.30)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
