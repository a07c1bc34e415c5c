"""A batch of 4 pictures through SD3 Img2Img (fal) against the emulator with a 1 s job, against
a single picture: the node runs a batch's requests concurrently.

Target: batch of 4 wall time <= 1.5x a single picture. Uses the real 1024x1024 pictures in
../shared/data/images (so encoding and upload are part of the measure).
Run: python benchmarks/batch.py
"""

import asyncio
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from _pack import ROOT, SHARED_IMAGES, load_pack

load_pack()
sys.path.insert(0, str(ROOT / "tests"))  # the emulator lives with the tests
from comfyui_fal_sd3.nodes.fal_img2img import FalSD3Img2Img  # noqa: E402
from fal_emulator import FalEmulator  # noqa: E402

JOB_SECONDS = 1.0
RUNS = 3
PARAMS = dict(prompt="a watercolor", negative_prompt="", prompt_expansion=False, num_inference_steps=28,
              guidance_scale=5.0, num_images=1, enable_safety_checker=True, strength=0.8, sync_mode=False)


def pictures(count: int) -> torch.Tensor:
    files = sorted(SHARED_IMAGES.glob("*.webp"))
    arrays = [np.array(Image.open(files[i % len(files)]).convert("RGB")) for i in range(count)]
    return torch.from_numpy(np.stack(arrays)).float() / 255.0


def wall(images: torch.Tensor, seed: int) -> float:
    start = time.perf_counter()
    asyncio.run(FalSD3Img2Img().run(image=images, seed=seed, **PARAMS))
    return time.perf_counter() - start


def main() -> int:
    with FalEmulator(job_seconds=JOB_SECONDS) as emu, tempfile.TemporaryDirectory() as state:
        os.environ.update(emu.env(), FAL_SD3_STATE_DIR=state)
        single, four = pictures(1), pictures(4)
        # Different seeds per run: nothing is served from a cache, every run pays its requests.
        one = statistics.median(wall(single, 10 * i) for i in range(RUNS))
        batch = statistics.median(wall(four, 10 * i + 1) for i in range(RUNS))
    print(f"SD3 Img2Img (fal) on the emulator, {JOB_SECONDS:.1f} s job, 1024x1024 pictures, median of {RUNS}")
    print(f"{'input':<12}{'wall s':>8}")
    print(f"{'1 picture':<12}{one:8.2f}")
    print(f"{'4 pictures':<12}{batch:8.2f}")
    print(f"\nbatch of 4 / single = {batch / one:.2f} (target <= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
