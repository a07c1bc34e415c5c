"""IMAGE-like array -> PNG data URI: fal_core against the path ComfyUI's API nodes take
(Pillow's default PNG settings, then base64), on real 1024x1024 pictures; and JPEG q95.

Targets: PNG time <= 0.35x ComfyUI's at <= 1.2x its size; JPEG q95 <= 10 ms.
Run: python benchmarks/codec.py  (reads ../shared/data/images/*.webp)
"""

import base64
import io
import statistics
import sys
import time

import numpy as np
import torch
from PIL import Image

from _pack import SHARED_IMAGES, load_pack

pack = load_pack()
from comfyui_fal_sd3.fal_core import images  # noqa: E402
from comfyui_fal_sd3.nodes.tensors import to_uint8  # noqa: E402

RUNS = 15


def comfy_api_nodes_path(tensor: torch.Tensor) -> str:
    array = (tensor[0] * 255).clamp(0, 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("utf-8")


def ours_png(tensor: torch.Tensor) -> str:
    return images.to_data_uri(images.encode_png(to_uint8(tensor)[0]), "image/png")


def ours_jpeg(tensor: torch.Tensor) -> str:
    return images.to_data_uri(images.encode_jpeg(to_uint8(tensor)[0]), "image/jpeg")


def median_ms(fn, tensor):
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        out = fn(tensor)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), len(out)


def main() -> int:
    pictures = sorted(SHARED_IMAGES.glob("*.webp"))
    if not pictures:
        print(f"no pictures in {SHARED_IMAGES}", file=sys.stderr)
        return 1
    print(f"{'picture':<18}{'path':<22}{'ms':>8}{'data URI bytes':>16}{'time x':>9}{'size x':>9}")
    for path in pictures:
        array = np.array(Image.open(path).convert("RGB"))
        tensor = torch.from_numpy(array).float().div(255).unsqueeze(0)
        base_ms, base_len = median_ms(comfy_api_nodes_path, tensor)
        for name, fn in (("ComfyUI API nodes", comfy_api_nodes_path), ("fal_core PNG", ours_png),
                         ("fal_core JPEG q95", ours_jpeg)):
            ms, length = median_ms(fn, tensor)
            print(f"{path.stem:<18}{name:<22}{ms:8.1f}{length:16,}{ms / base_ms:9.2f}{length / base_len:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
