"""SD3 Img2Img (fal) on a real network: the node's overhead over the job at RTT 0, 50 and 150 ms.

The emulator (tests/fal_emulator.py, standalone, in its own process) serves TLS 1.3 with a test
CA and charges the network's costs: each request and answer RTT/2 each way, each stream event
RTT/2, a new connection one RTT for TCP and one for TLS; the CDN is a host of its own. Each
client runs in a fresh process, so its first run pays what a first run after start pays (the
node after the preparation ComfyUI's start runs: imports, no network); each run is one
``asyncio.run``, as ComfyUI runs a prompt. Side by side, per RTT:

- fal_core: this pack's node (tensor in, tensor out);
- before: the node as of --before DIR (e.g. ``git archive <commit>`` unpacked), if given;
- fal-client: the official client's ``subscribe()`` with its defaults (polling every 0.1 s),
  the picture encoded with its ``encode_image`` and the result fetched with ``httpx.get`` and
  decoded (fal-client has no download helper);
- the physical floor: 3 RTT (submit; the result; the file: the stream's own trip overlaps the
  job) plus the node's unavoidable CPU (tensor -> PNG, result PNG -> tensor), measured.

Overhead = wall time - job time. Requests and new connections per job are counted by the
emulator. Targets (issue #10): at 50 ms, warm <= floor + 40 ms, first <= floor + 2 RTT + 40 ms;
<= 4 requests and <= 2 new connections per job, 0 new connections warm; a batch of 4 <= 1.1x one.

Run: python benchmarks/network.py [--runs 5] [--before DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The team's shared pictures: beside the repository, or beside the folder holding its worktrees.
SHARED_IMAGES = next((p / "shared" / "data" / "images" for p in ROOT.parents
                      if (p / "shared" / "data" / "images").is_dir()), ROOT.parent / "shared" / "data" / "images")
RTTS = (0.0, 0.05, 0.15)
JOB_SECONDS = 1.0
SIDE = 512
ENDPOINT = "fal-ai/stable-diffusion-v3-medium/image-to-image"
PARAMS = dict(prompt="a watercolor", negative_prompt="", prompt_expansion=False, num_inference_steps=28,
              guidance_scale=5.0, num_images=1, enable_safety_checker=True, strength=0.8, sync_mode=False)


# --- the parent: emulators, child processes, the table ----------------------------------------

@contextmanager
def emulator(rtt: float):
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fal_emulator.py"), "--port", "0", "--tls", "--rtt", str(rtt),
         "--job-seconds", str(JOB_SECONDS)], stdout=subprocess.PIPE, text=True)
    try:
        yield json.loads(process.stdout.readline())
    finally:
        process.terminate()
        process.wait(10)


def child(kind: str, info: dict, runs: int, pack: Path, state: Path) -> dict:
    env = {**os.environ, "FAL_KEY": info["key"], "FAL_QUEUE_URL": info["queue_url"], "FAL_REST_URL": info["rest_url"],
           "FAL_CDN_URL": info["cdn_url"], "SSL_CERT_FILE": info["ca_file"], "FAL_SD3_STATE_DIR": str(state),
           # fal-client's hosts are fixed to https://<host>/: the emulator's queue lives under /queue.
           "FAL_QUEUE_RUN_HOST": info["queue_url"].removeprefix("https://")}
    done = subprocess.run([sys.executable, __file__, "--child", kind, "--runs", str(runs), "--pack", str(pack)],
                          env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5, help="warm runs per client and RTT")
    parser.add_argument("--before", type=Path, help="a checkout of the pack to compare with")
    parser.add_argument("--rtt", type=float, action="append", help="only these round trips, in seconds")
    parser.add_argument("--child")
    parser.add_argument("--pack", type=Path, default=ROOT)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](args.runs, args.pack)))
        return 0
    clients = [("fal_core", "node", ROOT)]
    if args.before:
        clients.append((f"before ({args.before.name})", "node", args.before))
    try:
        import fal_client
        clients.append((f"fal-client {fal_client.__version__}", "fal_client", ROOT))
    except ImportError:
        print("fal-client is not installed (pip install fal-client): measuring the node only\n")
    rows, batches = [], {}
    for rtt in args.rtt or RTTS:
        with emulator(rtt) as info:
            for name, kind, pack in clients:
                with tempfile.TemporaryDirectory() as state:
                    result = child(kind, info, args.runs, pack, Path(state))
                rows.append((rtt, name, result))
                if "batch_ratio" in result and name == "fal_core":
                    batches[rtt] = result
    cpu = next(r for _, n, r in rows if n == "fal_core")["cpu"]
    print(f"SD3 Img2Img (fal), {SIDE}x{SIDE} picture, {JOB_SECONDS:.1f} s job, emulator over TLS 1.3; overhead = "
          f"wall - job, median of {args.runs} warm runs (each one asyncio.run), first = first run of a fresh process")
    print(f"floor = 3 RTT + the node's unavoidable CPU ({cpu * 1000:.0f} ms: tensor -> PNG, result PNG -> tensor)\n")
    print(f"{'RTT':>4} {'client':<20}{'first ms':>9}{'warm ms':>9}{'floor ms':>9}{'warm-floor':>11}"
          f"{'first-floor':>12}{'req/job':>8}{'new conn first':>15}{'warm':>5}")
    for rtt, name, r in rows:
        floor = 3 * rtt + cpu
        print(f"{rtt * 1000:4.0f} {name:<20}{r['first'] * 1000:9.0f}{r['warm'] * 1000:9.0f}{floor * 1000:9.0f}"
              f"{(r['warm'] - floor) * 1000:11.0f}{(r['first'] - floor) * 1000:12.0f}{r['requests']:8.0f}"
              f"{r['conn_first']:15d}{r['conn_warm']:5.0f}")
    print(f"\n{'RTT':>4} {'1 picture s':>12}{'4 pictures s':>13}{'ratio':>7}   (fal_core, warm, median)")
    for rtt, r in batches.items():
        print(f"{rtt * 1000:4.0f} {r['one_wall']:12.2f}{r['batch_wall']:13.2f}{r['batch_ratio']:7.2f}")
    print(f"\nthe node's own CPU per run, ms (median of 9; at RTT {rows[0][0] * 1000:.0f} ms)")
    names = list(rows[0][2]["steps"])
    print(f"{'client':<20}" + "".join(f"{n:>11}" for n in names))
    for rtt, name, r in rows:
        if rtt == rows[0][0] and "steps" in r:
            print(f"{name:<20}" + "".join(f"{r['steps'].get(n, float('nan')) * 1000:11.2f}" for n in names))
    ours = {rtt: r for rtt, n, r in rows if n == "fal_core"}
    if 0.05 in ours and 0.05 in batches:
        r, rtt, floor = ours[0.05], 0.05, 3 * 0.05 + cpu
        print(f"\nat 50 ms: warm - floor {(r['warm'] - floor) * 1000:.0f} ms (target <= 40); first - floor "
              f"{(r['first'] - floor) * 1000:.0f} ms (target <= {2 * rtt * 1000 + 40:.0f}); requests/job "
              f"{r['requests']:.0f} (<= 4); new connections {r['conn_first']} first (<= 2), "
              f"{r['conn_warm']:.0f} warm (0); "
              f"batch of 4 {batches[0.05]['batch_ratio']:.2f}x one (<= 1.1)")
    return 0


# --- the children: one client each, in a fresh process ------------------------------------------

def load_pack(root: Path):
    spec = importlib.util.spec_from_file_location("comfyui_fal_sd3", root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_fal_sd3"] = module
    spec.loader.exec_module(module)
    return module


def source_picture():
    import numpy as np
    from PIL import Image
    image = Image.open(sorted(SHARED_IMAGES.glob("*.webp"))[0]).convert("RGB")
    return np.asarray(image.resize((SIDE, SIDE), Image.LANCZOS))


class Counter:
    """The emulator's count of calls and connections, over a connection of its own."""

    def __init__(self) -> None:
        import httpx
        self.http = httpx.Client(base_url=os.environ["FAL_QUEUE_URL"].removesuffix("/queue"), timeout=30)
        self.http.post("/_emulator/reset")

    def connections(self) -> int:
        return sum(self.http.get("/_emulator/connections").json().values())

    def measure(self, job) -> tuple[float, int, int]:
        """(overhead s, requests, new connections) of one job."""
        self.http.post("/_emulator/reset")
        opened = self.connections()
        start = time.perf_counter()
        job()
        wall = time.perf_counter() - start
        requests = len(self.http.get("/_emulator/calls").json())
        return wall - JOB_SECONDS, requests, self.connections() - opened


def summary(first, warm) -> dict:
    return {"first": first[0], "conn_first": first[2], "warm": statistics.median(w[0] for w in warm),
            "requests": statistics.median(w[1] for w in warm), "conn_warm": statistics.median(w[2] for w in warm)}


def node_child(runs: int, pack: Path) -> dict:
    import numpy as np
    import torch
    load_pack(pack)
    from comfyui_fal_sd3.nodes.fal_img2img import FalSD3Img2Img

    try:
        from comfyui_fal_sd3.nodes.session import prepare
    except ImportError:
        pass  # a pack from before the start-up preparation
    else:
        prepare().join()  # what ComfyUI's start does, before any prompt
    counter = Counter()
    pixels = source_picture()
    one = torch.from_numpy(pixels[None].copy()).float() / 255.0
    four = torch.from_numpy(np.stack([pixels] * 4)).float() / 255.0

    def run(images, seed):
        # Each run a new seed: nothing is served from the journal, every run pays its request.
        return lambda: asyncio.run(FalSD3Img2Img().run(image=images, seed=seed, **PARAMS))

    first = counter.measure(run(one, 0))
    warm = [counter.measure(run(one, seed)) for seed in range(1, runs + 1)]
    singles = [counter.measure(run(one, 1000 + 10 * i))[0] + JOB_SECONDS for i in range(3)]
    batches = [counter.measure(run(four, 2000 + 10 * i))[0] + JOB_SECONDS for i in range(3)]
    result = summary(first, warm)
    one_wall, batch_wall = statistics.median(singles), statistics.median(batches)
    steps = node_cpu(pixels)
    result.update(one_wall=one_wall, batch_wall=batch_wall, batch_ratio=batch_wall / one_wall,
                  cpu=unavoidable(steps), steps=steps)
    return result


def unavoidable(steps: dict) -> float:
    """The CPU no node can skip: the conversions and codecs, not the journal."""
    return sum(v for k, v in steps.items() if k != "journal")


def node_cpu(pixels) -> dict:
    """Median seconds of the node's own work on a run: what any node must compute (tensor ->
    uint8 -> PNG, the result PNG -> uint8 -> tensor), and the journal's two records."""
    import uuid

    import torch
    from comfyui_fal_sd3.fal_core.images import decode_image, encode
    from comfyui_fal_sd3.fal_core.journal import Journal
    from comfyui_fal_sd3.fal_core.status import RequestHandle
    from comfyui_fal_sd3.nodes.tensors import from_uint8, to_uint8

    from PIL import Image

    tensor = torch.from_numpy(pixels[None].copy()).float() / 255.0
    array = to_uint8(tensor)[0]
    # The result as the emulator sends it (Pillow, compress level 1), not our own encoding.
    buf = io.BytesIO()
    Image.fromarray(255 - pixels).save(buf, "PNG", compress_level=1)
    png = buf.getvalue()
    decoded = decode_image(png)
    steps = {"to_uint8": lambda: to_uint8(tensor), "encode": lambda: encode(array, "png"),
             "decode": lambda: decode_image(png), "from_uint8": lambda: from_uint8([decoded])}
    with tempfile.TemporaryDirectory() as folder:
        book = Journal(Path(folder) / "journal.jsonl")

        def journal():
            request_id = str(uuid.uuid4())
            handle = RequestHandle.from_request_id("https://queue.fal.run", ENDPOINT, request_id)
            book.submitted("f" * 64, handle, {"prompt": "a watercolor"})
            book.completed("f" * 64, request_id, {"images": [{"url": "https://v3.fal.media/files/x.png"}]})
        steps["journal"] = journal
        times = {name: [] for name in steps}
        for _ in range(9):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def fal_client_child(runs: int, pack: Path) -> dict:
    import httpx
    import numpy as np
    from PIL import Image

    import fal_client

    counter = Counter()
    picture = Image.fromarray(source_picture())

    def run(seed):
        def job():
            url = fal_client.encode_image(picture, format="png")
            result = fal_client.subscribe(ENDPOINT, arguments={**PARAMS, "image_url": url, "seed": seed})
            data = httpx.get(result["images"][0]["url"]).content
            np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        return job

    first = counter.measure(run(0))
    return summary(first, [counter.measure(run(seed)) for seed in range(1, runs + 1)])


CHILDREN = {"node": node_child, "fal_client": fal_client_child}

if __name__ == "__main__":
    sys.exit(main())
