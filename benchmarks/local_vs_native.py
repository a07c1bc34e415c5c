"""SD3 Img2Img (local diffusers) against ComfyUI's own SD3 path, at SD3 medium's real size.

Builds SD3 medium with random weights offline as one single-file checkpoint in the original layout
(MMDiT 2.03 B, CLIP-L, CLIP-G, VAE; T5-XXL with --t5), streamed to disk tensor by tensor (about 6 GB in
bf16 without T5), and deletes it afterwards.

With COMFYUI_DIR (and COMFYUI_PYTHON) set: starts a real ComfyUI once per side, one side at a time, and
runs on the same checkpoint and picture (a) ComfyUI's native SD3 graph (CheckpointLoaderSimple ->
VAEEncode -> KSampler with denoise = strength -> VAEDecode, ComfyUI's defaults) and (b) the pack's local
node with dtype auto, with equal denoising steps (diffusers runs N - int(N - N*strength) of N steps; the
KSampler gets that many). Prints s/step (from ComfyUI's progress events), cold and warm wall time, peak and
steady RSS of the ComfyUI process, and what "Unload models" (POST /free) gives back.

Without COMFYUI_DIR (or after it, with --bare): the node against a bare diffusers call on the same
loaded pipeline, in this process (with diffusers' default context, and with the node's context passed to
the bare call), and the pixel difference between the node's result and diffusers' default.

  python benchmarks/local_vs_native.py [--size 512] [--steps 4] [--strength 0.75] [--bare]
  on a GPU: --device cuda --size 1024 --steps 28, with and without --t5 (prints the published A100 figures)
On the CPU ComfyUI's native path peaks at about 16 GiB of RSS while it loads (fp32): start it with that free.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import statistics
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from _pack import ROOT, load_pack

load_pack()
sys.path.insert(0, str(ROOT / "tests"))  # the tiny SD3 recipe and the ComfyUI launcher live with the tests
import tiny_sd3  # noqa: E402
from comfyui_fal_sd3.nodes.single_file import SHIPPED  # noqa: E402

PROMPT = "a watercolor of a red cat on a windowsill"
CHECKPOINT = "sd3_medium_random.safetensors"
GIB = 1 << 30
# HF's SD3 launch post: A100 80 GB, fp16, 1024x1024, 28 steps, all three text encoders.
PUBLISHED_A100 = "published (A100, fp16, 1024², 28 steps, T5 on): 4.76 s, 18.8 GB"


# --- the checkpoint ----------------------------------------------------------------------------

def checkpoint_shapes(with_t5: bool) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of SD3 medium's single-file checkpoint, from the shipped configs (no memory)."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    with torch.device("meta"):
        transformer = SD3Transformer2DModel.from_config(SD3Transformer2DModel.load_config(SHIPPED / "transformer"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SHIPPED / "vae"))
        encoders = {
            "clip_l": CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(SHIPPED / "text_encoder")),
            "clip_g": CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(SHIPPED / "text_encoder_2")),
        }
        if with_t5:
            encoders["t5xxl"] = T5EncoderModel(T5Config.from_pretrained(SHIPPED / "text_encoder_3"))
        tensors = {
            **tiny_sd3._transformer_to_original(transformer.state_dict(), transformer.config.num_layers),
            **tiny_sd3._vae_to_original(vae.state_dict(), len(vae.config.down_block_types)),
        }
        for name, model in encoders.items():
            for key, value in model.state_dict().items():
                # Stability's files have no projection for CLIP-L (it is the identity).
                if not (name == "clip_l" and key == "text_projection.weight"):
                    tensors[f"text_encoders.{name}.transformer.{key}"] = value
    shapes = {name: tuple(value.shape) for name, value in tensors.items()}
    for name, shape in shapes.items():
        # The original VAE's mid-block attention is 1x1 convolutions (diffusers' are linear layers).
        if ".mid.attn_1." in name and name.endswith(".weight") and len(shape) == 2:
            shapes[name] = (*shape, 1, 1)
    return shapes


def random_tensor(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=torch.bfloat16)
    if len(shape) == 1:  # norm scales
        return torch.ones(shape, dtype=torch.bfloat16)
    return torch.empty(shape, dtype=torch.bfloat16).normal_(0.0, 0.02, generator=generator)


def write_checkpoint(path: Path, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> int:
    """A bf16 safetensors file of random weights, written one tensor at a time; its size in bytes."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    generator = torch.Generator().manual_seed(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in shapes.items():
            f.write(random_tensor(name, shape, generator).view(torch.int16).numpy().tobytes())
    return 8 + len(raw) + offset


def steps_run(steps: int, strength: float) -> int:
    """How many steps diffusers' img2img runs of ``steps`` at ``strength`` (its get_timesteps)."""
    return steps - int(max(steps - min(steps * strength, steps), 0))


def picture(size: int) -> torch.Tensor:
    """A smooth test picture (B, H, W, C) in [0, 1]."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    return torch.stack([x, y, (x + y) / 2], dim=-1)[None]


# --- in a real ComfyUI -------------------------------------------------------------------------

def rss(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024 / GIB
    return fields


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process: steady under other load, where wall time is not."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def comfyui_pid(base: Path) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"main.py" in argv and str(base).encode() in argv:
                return int(entry.name)
    raise RuntimeError("ComfyUI's process was not found")


class Events:
    """ComfyUI's websocket messages for one client, timestamped as they arrive (in a thread)."""

    def __init__(self, url: str, client_id: str) -> None:
        self.messages: list[tuple[float, dict]] = []
        self._url = f"{url.replace('http', 'ws', 1)}/ws?clientId={client_id}"
        self._ready = threading.Event()
        threading.Thread(target=lambda: asyncio.run(self._listen()), daemon=True).start()
        self._ready.wait(30)

    async def _listen(self) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(self._url, heartbeat=30, max_msg_size=0) as ws:
                self._ready.set()
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.TEXT:
                        self.messages.append((time.perf_counter(), json.loads(message.data)))

    def of(self, prompt_id: str, kind: str) -> list[tuple[float, dict]]:
        return [(t, m["data"]) for t, m in list(self.messages)
                if m["type"] == kind and m.get("data", {}).get("prompt_id") == prompt_id]


def run_prompt(url: str, events: Events, prompt: dict, client_id: str, node: str, pid: int) -> dict[str, float]:
    from comfyui_server import queue_prompt, wait_history

    cpu, load = cpu_seconds(pid), os.getloadavg()[0]
    start = time.perf_counter()
    prompt_id = queue_prompt(url, prompt, client_id)
    entry = wait_history(url, prompt_id, timeout=1800)
    if entry["status"]["status_str"] != "success":
        raise RuntimeError(json.dumps(entry["status"]["messages"])[-2000:])
    time.sleep(0.5)  # the last websocket messages
    done = events.of(prompt_id, "execution_success")
    wall = (done[0][0] if done else time.perf_counter()) - start
    ticks = [t for t, data in events.of(prompt_id, "progress") if data.get("node") == node]
    per_step = (ticks[-1] - ticks[0]) / (len(ticks) - 1) if len(ticks) > 1 else float("nan")
    return {"wall": wall, "per_step": per_step, "ticks": len(ticks), "cpu": cpu_seconds(pid) - cpu,
            "load": (load + os.getloadavg()[0]) / 2}


def native_graph(image: str, steps: int, strength: float, seed: int) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["2", 1]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["2", 1]}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["2", 2]}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "seed": seed, "steps": steps, "cfg": 5.0, "sampler_name": "euler",
            "scheduler": "simple", "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["5", 0],
            "denoise": strength}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["2", 2]}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}},
    }


def local_graph(image: str, steps: int, strength: float, seed: int, device: str) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "DiffusersSD3Img2Img", "inputs": {
            "model": f"checkpoints/{CHECKPOINT}", "image": ["1", 0], "prompt": PROMPT, "negative_prompt": "",
            "num_inference_steps": steps, "seed": seed, "guidance_scale": 5.0, "num_images": 1,
            "strength": strength, "model_path": "", "device": device, "dtype": "auto", "t5": "auto",
            "offload": "none", "config_path": ""}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }


def comfyui_side(name: str, checkpoint: Path, args, graph, node: str) -> dict:
    import httpx
    from PIL import Image

    from comfyui_server import running_comfyui

    with tempfile.TemporaryDirectory(prefix="sd3-bench-comfyui-") as tmp:
        base = Path(tmp)
        (base / "models" / "checkpoints").mkdir(parents=True)
        (base / "models" / "checkpoints" / CHECKPOINT).symlink_to(checkpoint)
        (base / "input").mkdir()
        pixels = (picture(args.size)[0].numpy() * 255).round().astype("uint8")
        Image.fromarray(pixels).save(base / "input" / "bench.png")
        env = {**os.environ, "FAL_SD3_STATE_DIR": str(base / "state")}
        device_args = ("--cpu",) if args.device == "cpu" else ()
        with running_comfyui(base, env, device_args) as url:
            pid = comfyui_pid(base)
            idle = rss(pid)["VmRSS"]
            events = Events(url, f"bench-{name}")
            cold = run_prompt(url, events, graph(seed=1), f"bench-{name}", node, pid)
            warm = run_prompt(url, events, graph(seed=2), f"bench-{name}", node, pid)
            time.sleep(2)
            steady = rss(pid)
            log = base / "comfyui.log"
            httpx.post(f"{url}/free", json={"unload_models": True}, timeout=10)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and "pipeline released" not in log.read_text():
                time.sleep(0.5)
            time.sleep(3)  # ComfyUI's own gc after a free
            after = rss(pid)["VmRSS"]
    held = steady["VmRSS"] - idle
    return {"name": name, "cold": cold, "warm": warm, "idle": idle, "steady": steady["VmRSS"],
            "peak": steady["VmHWM"], "after_unload": after,
            "released": (steady["VmRSS"] - after) / held if held > 0 else float("nan")}


def with_comfyui(checkpoint: Path, args) -> None:
    run = steps_run(args.steps, args.strength)
    sides = []
    print(f"ComfyUI at {os.environ['COMFYUI_DIR']}, {args.device}, {args.size}x{args.size}, {run} denoising steps "
          f"each (local: {args.steps} at strength {args.strength}; native: KSampler {run} steps, denoise "
          f"{args.strength}), CFG 5", flush=True)
    sides.append(comfyui_side("native SD3, ComfyUI defaults", checkpoint, args,
                              lambda seed: native_graph("bench.png", run, args.strength, seed), node="6"))
    print(f"  measured: {sides[-1]['name']}", flush=True)
    sides.append(comfyui_side("the pack's node, dtype auto", checkpoint, args,
                              lambda seed: local_graph("bench.png", args.steps, args.strength, seed, args.device),
                              node="2"))
    print()
    print("| path | s/step | warm run (CPU time) | cold run | load avg | peak RSS | steady RSS | after Unload models |")
    print("|---|---|---|---|---|---|---|---|")
    for s in sides:
        print(f"| {s['name']} | {s['warm']['per_step']:.2f} | {s['warm']['wall']:.1f} s ({s['warm']['cpu']:.0f} s) "
              f"| {s['cold']['wall']:.1f} s | {s['warm']['load']:.1f} "
              f"| {s['peak']:.1f} GiB | {s['steady']:.1f} GiB | {s['after_unload']:.1f} GiB "
              f"({s['released'] * 100:.0f} % of what the run added, {s['steady'] - s['idle']:.1f} GiB) |")
    native, local = sides
    print()
    print(f"local / native warm CPU time: {local['warm']['cpu'] / native['warm']['cpu']:.2f}x (the machine's other "
          f"load, {os.cpu_count()} CPUs, weighs on wall times)")
    print(f"local / native s/step: {local['warm']['per_step'] / native['warm']['per_step']:.2f}x (target <= 0.35x "
          f"on a CPU with hardware bf16); steady RSS local / native: {local['steady'] / native['steady']:.2f}x "
          "(target <= 1)")
    print(f"Unload models gives back {local['released'] * 100:.0f} % of the local pipeline's memory (target >= 90 %)")


# --- in this process: the node against a bare diffusers call ---------------------------------

def config_folder(folder: Path, with_t5: bool) -> Path:
    """The shipped configs, and stand-in tokenizers (the real ones are ComfyUI's); token counts match."""
    shutil.copytree(SHIPPED, folder)
    tiny = tiny_sd3.build()
    tiny["tokenizer"].save_pretrained(folder / "tokenizer")
    tiny["tokenizer_2"].save_pretrained(folder / "tokenizer_2")
    if with_t5:
        tiny["tokenizer_3"].save_pretrained(folder / "tokenizer_3")
    return folder


def timed(fn, device: torch.device) -> tuple[float, float]:
    """Wall and CPU seconds of ``fn()``."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu


def without_comfyui(checkpoint: Path, config: Path, args) -> None:
    from comfyui_fal_sd3.nodes.local_img2img import DiffusersSD3Img2Img
    from comfyui_fal_sd3.nodes.local_models import CUSTOM_PATH

    device = torch.device(args.device)
    image = picture(args.size)
    inputs = dict(prompt=PROMPT, negative_prompt="", num_inference_steps=args.steps, seed=1, guidance_scale=5.0,
                  num_images=1, strength=args.strength, model_path=str(checkpoint), config_path=str(config),
                  device=args.device, dtype="auto")
    node = DiffusersSD3Img2Img()
    ours = None

    def node_run():
        nonlocal ours
        ours = node.run(CUSTOM_PATH, image, **inputs)[0]

    cold = timed(node_run, device)[0]
    pipe = node.cache._pipe
    pixels = image.permute(0, 3, 1, 2).to(device, pipe.vae.dtype)
    embeddings = next(iter(node.cache.prompts._entries.values()))
    result = {}

    def bare(label, **context):
        def call():
            result[label] = pipe(
                image=pixels, height=args.size, width=args.size, strength=args.strength,
                num_inference_steps=args.steps, guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(1),
                output_type="pt", **context).images
        return call

    default_call = bare("default", prompt=PROMPT, negative_prompt="")
    same_call = bare("same", **embeddings)
    times: dict[str, list[tuple[float, float]]] = {"node": [], "default": [], "same": []}
    with torch.inference_mode():
        for _ in range(args.runs):  # interleaved, so drift in clock speed hits all alike
            times["node"].append(timed(node_run, device))
            times["same"].append(timed(same_call, device))
            times["default"].append(timed(default_call, device))
    run = steps_run(args.steps, args.strength)
    median = {k: statistics.median(wall for wall, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    print(f"SD3 medium size, random weights, {'with' if args.t5 else 'no'} T5, on {args.device} in "
          f"{str(pipe.transformer.dtype).removeprefix('torch.')}; {args.size}x{args.size}, {run} steps; "
          f"median of {args.runs}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("| path | s/step | warm run | CPU time |")
    print("|---|---|---|---|")
    for label, key in (("the pack's node", "node"), ("bare diffusers call, the node's context", "same"),
                       ("bare diffusers call, diffusers' default context", "default")):
        print(f"| {label} | {median[key] / run:.2f} | {median[key]:.1f} s | {cpu[key]:.1f} s |")
    print(f"node cold run (load included): {cold:.1f} s")
    print(f"node / bare call with the same inputs: {median['node'] / median['same']:.3f}x wall, "
          f"{cpu['node'] / cpu['same']:.3f}x CPU time (target <= 1.02x)")
    print(f"node / diffusers' default call: {median['node'] / median['default']:.2f}x")
    default = result["default"].permute(0, 2, 3, 1).float().cpu().clamp(0, 1)
    delta = (ours - default).abs() * 255
    print(f"pixels, node vs diffusers' default context: mean |Δ| {delta.mean():.2f}, max {delta.max():.0f} "
          "of 255 (random weights)")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 1e9:.1f} GB; {PUBLISHED_A100}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--strength", type=float, default=0.75)
    parser.add_argument("--runs", type=int, default=2, help="warm runs of each (without ComfyUI)")
    parser.add_argument("--t5", action="store_true", help="include T5-XXL (+9.5 GB in bf16)")
    parser.add_argument("--bare", action="store_true",
                        help="with COMFYUI_DIR: afterwards also the node against a bare diffusers call, "
                             "on the same checkpoint")
    parser.add_argument("--workdir", default=tempfile.gettempdir(), help="where the checkpoint is written")
    args = parser.parse_args()
    if steps_run(args.steps, args.strength) < 2:
        parser.error("at least 2 denoising steps are needed for s/step")

    with tempfile.TemporaryDirectory(prefix="sd3-bench-", dir=args.workdir) as tmp:
        checkpoint = Path(tmp) / CHECKPOINT
        started = time.perf_counter()
        size = write_checkpoint(checkpoint, checkpoint_shapes(args.t5))
        print(f"checkpoint: {size / 1e9:.2f} GB of random bf16 weights written in "
              f"{time.perf_counter() - started:.0f} s to {checkpoint} (deleted at the end)", flush=True)
        if os.environ.get("COMFYUI_DIR"):
            with_comfyui(checkpoint, args)
        if not os.environ.get("COMFYUI_DIR") or args.bare:
            print(flush=True)
            without_comfyui(checkpoint, config_folder(Path(tmp) / "config", args.t5), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
