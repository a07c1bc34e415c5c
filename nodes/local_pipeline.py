"""Loading diffusers' SD3 img2img pipeline offline, on the chosen device, and keeping it loaded.

diffusers and transformers are imported here, when the local node first runs, never when
ComfyUI imports the pack.
"""

from __future__ import annotations

import gc
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from . import comfy, single_file
from .local_models import CHECKPOINT, LocalModelError, ModelSource

PACK_DIR = Path(__file__).resolve().parents[1]
DEVICES = ("auto", "cuda", "mps", "cpu")
DTYPES = ("auto", "fp16", "bf16", "fp32")
T5_MODES = ("auto", "on", "off")
OFFLOADS = ("none", "model", "sequential")
log = logging.getLogger("fal_sd3")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class LoadOptions:
    device: str = "auto"
    dtype: str = "auto"
    t5: str = "auto"
    offload: str = "none"
    config_path: str = ""


@dataclass(frozen=True)
class Placement:
    """Where the weights live and run, as resolved from the options on this machine."""

    device: torch.device
    dtype: torch.dtype
    use_t5: bool
    offload: str


def require_diffusers():
    """diffusers' pipeline class, or an error with the command that installs what is missing."""
    try:
        import transformers  # noqa: F401  (the text encoders; diffusers imports it only lazily)
        from diffusers import StableDiffusion3Img2ImgPipeline
    except ImportError as exc:
        raise LocalModelError(
            f"the local SD3 node needs diffusers and transformers ({exc.name or exc} could not be imported); "
            f'install them into the Python that runs ComfyUI: python -m pip install "{PACK_DIR}[local]"'
        ) from None
    return StableDiffusion3Img2ImgPipeline


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        preferred = comfy.torch_device()
        if preferred is not None:
            return preferred
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if choice not in available:
        raise LocalModelError(f"device: {choice!r} is not one of {', '.join(DEVICES)}.")
    if not available[choice]:
        raise LocalModelError(f"device: {choice!r} is not available in this PyTorch on this machine; choose auto or cpu.")
    return torch.device(choice)


def pick_dtype(choice: str, device: torch.device) -> torch.dtype:
    if choice == "auto":
        # Half precision is what SD3 is published in and what GPUs run fast; CPUs run fp32 best.
        return torch.float32 if device.type == "cpu" else torch.float16
    if choice not in _DTYPES:
        raise LocalModelError(f"dtype: {choice!r} is not one of {', '.join(DTYPES)}.")
    if choice == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise LocalModelError("dtype: 'bf16' is not supported by this GPU; choose fp16 or auto.")
    return _DTYPES[choice]


def place(source: ModelSource, options: LoadOptions) -> Placement:
    """Check the options against the model and this machine before anything is loaded."""
    device = pick_device(options.device)
    dtype = pick_dtype(options.dtype, device)
    if options.t5 not in T5_MODES:
        raise LocalModelError(f"t5: {options.t5!r} is not one of {', '.join(T5_MODES)}.")
    if options.t5 == "on" and not source.has_t5:
        raise LocalModelError(
            f"t5: 'on', but {source.path.name!r} has no T5 text encoder; set t5 to auto or off (prompts then "
            "rely on the CLIP encoders alone), or use a model that includes T5."
        )
    if options.offload not in OFFLOADS:
        raise LocalModelError(f"offload: {options.offload!r} is not one of {', '.join(OFFLOADS)}.")
    if options.offload != "none" and device.type == "cpu":
        raise LocalModelError(
            f"offload: {options.offload!r} moves weights between the CPU and a GPU, and this run is on the CPU; "
            "set offload to none."
        )
    return Placement(device, dtype, options.t5 == "on" or (options.t5 == "auto" and source.has_t5), options.offload)


def load(source: ModelSource, options: LoadOptions):
    """The pipeline for ``source``, loaded from local files only and placed as ``options`` say."""
    placement = place(source, options)
    pipeline_class = require_diffusers()
    without_t5: dict[str, Any] = {} if placement.use_t5 else {"text_encoder_3": None, "tokenizer_3": None}
    try:
        with warnings.catch_warnings():
            # Newer diffusers renamed torch_dtype to dtype; older ones, still common in ComfyUI
            # installs, know only torch_dtype.
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            if source.kind == CHECKPOINT:
                config = single_file.resolve(source, placement.use_t5, options.config_path)
                components = {**single_file.load_tokenizers(config.tokenizers), **without_t5}
                pipe = pipeline_class.from_single_file(
                    str(source.path), config=str(config.folder), torch_dtype=placement.dtype,
                    local_files_only=True, **components)
            else:
                pipe = pipeline_class.from_pretrained(
                    str(source.path), torch_dtype=placement.dtype, local_files_only=True, **without_t5)
    except LocalModelError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LocalModelError(
            f"model: {str(source.path)!r} could not be loaded as SD3 ({type(exc).__name__}: {first}); check that "
            "the download is complete and is a Stable Diffusion 3 model."
        ) from exc
    for component in pipe.components.values():
        # from_single_file leaves some encoders (T5) in training mode: dropout would make
        # the same seed give other pictures.
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    if placement.offload == "model":
        pipe.enable_model_cpu_offload(device=placement.device)
    elif placement.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=placement.device)
    else:
        pipe.to(placement.device)
    return pipe


class PipelineCache:
    """One loaded pipeline, kept between runs while the model and options stay the same.

    The node instance owns it, and ComfyUI owns node instances: removing the node or ComfyUI's
    "free model and node cache" drops the instance and so the weights.
    """

    def __init__(self, loader: Callable[[ModelSource, LoadOptions], Any] = load) -> None:
        self._loader = loader
        self._key: tuple | None = None
        self._pipe: Any = None
        self.loads = 0

    def get(self, source: ModelSource, options: LoadOptions):
        key = (source.key, options)
        if self._pipe is None or key != self._key:
            self.release()
            # Make room first: ComfyUI's own models may fill the GPU.
            comfy.free_models()
            started = time.monotonic()
            self._pipe = self._loader(source, options)
            self._key = key
            self.loads += 1
            log.info("SD3 Img2Img (local): loaded %s in %.1f s", source.path, time.monotonic() - started)
        return self._pipe

    def release(self) -> None:
        if self._pipe is None:
            return
        self._pipe = self._key = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
