"""SD3 Img2Img (local diffusers) against a bare diffusers pipeline call with the same inputs.

Prints the node's warm run time over the bare call's with the same inputs (target <= 1.02x) and a cold run (first run
of a new node: loading from disk included) over a warm one.

Default: the tiny random-weight SD3 of the tests, on the CPU. ``--real`` builds SD3 medium at its
real size with random weights (from the pack's shipped configs; T5 off, tokenizers tiny) for a
GPU machine, and also prints seconds per denoising step, e.g.
  python benchmarks/local_overhead.py --real --device cuda --size 1024 --steps 28
Run: python benchmarks/local_overhead.py
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from _pack import ROOT, load_pack

load_pack()
sys.path.insert(0, str(ROOT / "tests"))  # the tiny SD3 recipe lives with the tests
import tiny_sd3  # noqa: E402
from comfyui_fal_sd3.nodes.local_img2img import DiffusersSD3Img2Img  # noqa: E402
from comfyui_fal_sd3.nodes.local_models import CUSTOM_PATH  # noqa: E402
from comfyui_fal_sd3.nodes.single_file import SHIPPED  # noqa: E402

PROMPT = "a watercolor of a red cat"


def save_real_size(folder: Path, dtype: torch.dtype) -> Path:
    """SD3 medium's architecture with random weights, without T5, saved in diffusers' layout."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel, StableDiffusion3Img2ImgPipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    tiny = tiny_sd3.build()
    pipe = StableDiffusion3Img2ImgPipeline(
        transformer=SD3Transformer2DModel.from_config(SD3Transformer2DModel.load_config(SHIPPED / "transformer")),
        vae=AutoencoderKL.from_config(AutoencoderKL.load_config(SHIPPED / "vae")),
        text_encoder=CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(SHIPPED / "text_encoder")),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(SHIPPED / "text_encoder_2")),
        text_encoder_3=None, tokenizer_3=None,
        scheduler=tiny["scheduler"], tokenizer=tiny["tokenizer"], tokenizer_2=tiny["tokenizer_2"],
    )
    pipe.to(dtype).save_pretrained(folder)
    return folder


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="SD3 medium's real size (random weights)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=128, help="picture side in pixels")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    strength = 1.0  # every step runs, so seconds per step is time / steps

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "sd3"
        (save_real_size(folder, dtype) if args.real else tiny_sd3.save(folder))
        picture = torch.rand(1, args.size, args.size, 3, generator=torch.Generator().manual_seed(0))
        inputs = dict(prompt=PROMPT, negative_prompt="", num_inference_steps=args.steps, seed=1,
                      guidance_scale=5.0, num_images=1, strength=strength)
        options = dict(model_path=str(folder), device=args.device, dtype="fp16" if dtype == torch.float16 else "fp32")

        node = DiffusersSD3Img2Img()
        cold = timed(lambda: node.run(CUSTOM_PATH, picture, **inputs, **options), device)
        pipe = node.cache._pipe
        pixels = picture.permute(0, 3, 1, 2).to(device)
        # The same inputs: the context the node builds (ComfyUI's, see nodes/local_prompt.py).
        embeddings = next(iter(node.cache.prompts._entries.values()))

        def bare():
            pipe(image=pixels, height=args.size, width=args.size, strength=strength,
                 num_inference_steps=args.steps, guidance_scale=5.0,
                 generator=torch.Generator("cpu").manual_seed(1), output_type="pt", **embeddings)

        def ours():
            node.run(CUSTOM_PATH, picture, **inputs, **options)

        bare_times, node_times = [], []
        for _ in range(args.runs):  # interleaved, so drift in clock speed hits both alike
            bare_times.append(timed(bare, device))
            node_times.append(timed(ours, device))
    bare_s, node_s = statistics.median(bare_times), statistics.median(node_times)
    name = "SD3 medium size, random weights, no T5" if args.real else "tiny SD3"
    print(f"{name} on {args.device}, {args.size}x{args.size}, {args.steps} steps, median of {args.runs}")
    print(f"  bare pipeline call : {bare_s * 1000:9.1f} ms  ({bare_s / args.steps * 1000:.1f} ms/step)")
    print(f"  node, warm         : {node_s * 1000:9.1f} ms  ({node_s / args.steps * 1000:.1f} ms/step)")
    print(f"  node / bare        : {node_s / bare_s:9.3f}x  (target <= 1.02x)")
    print(f"  node, cold (load)  : {cold * 1000:9.1f} ms  = {cold / node_s:.1f}x a warm run; loads: {node.cache.loads}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
