"""Loading diffusers' SD3 img2img pipeline offline, on the chosen device, and keeping it loaded.

diffusers and transformers are imported here, when the local node first runs, never when
ComfyUI imports the pack.
"""

from __future__ import annotations

import gc
import logging
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from . import comfy, local_memory, local_prompt, single_file
from .local_models import CHECKPOINT, LocalModelError, ModelSource

PACK_DIR = Path(__file__).resolve().parents[1]
DEVICES = ("auto", "cuda", "mps", "cpu")
DTYPES = ("auto", "fp16", "bf16", "fp32")
T5_MODES = ("auto", "on", "off")
OFFLOADS = ("none", "model", "sequential")
log = logging.getLogger("fal_sd3")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


@dataclass(frozen=True)
class LoadOptions:
    """How the local node loads the pipeline. Each option's choices, default and tooltip are
    declared here once: the node's inputs are built from them (``inputs``), and the checks in
    ``place`` take the same choices."""

    device: str = field(default="auto", metadata={
        "choices": DEVICES, "tooltip": "auto: ComfyUI's device, else cuda, mps, cpu."})
    dtype: str = field(default="auto", metadata={"choices": DTYPES, "tooltip": lambda: dtype_tooltip()})
    t5: str = field(default="auto", metadata={"choices": T5_MODES, "tooltip": (
        "The T5-XXL text encoder: off saves ~9.5 GB in fp16 at some cost in prompt following; "
        "auto uses it when the model has it.")})
    offload: str = field(default="none", metadata={"choices": OFFLOADS, "tooltip": (
        "GPU memory savers: model keeps one component on the GPU at a time; sequential, one layer "
        "(least memory, slowest).")})
    config_path: str = field(default="", metadata={"tooltip": (
        "For a single-file checkpoint other than SD3 medium, or outside ComfyUI: a folder in "
        "diffusers' layout with the configs and tokenizers (no weights).")})

    @classmethod
    def inputs(cls) -> dict[str, tuple[Any, dict[str, Any]]]:
        """The node's inputs for the options, in this order: a menu of the choices, or text."""
        built = {}
        for option in fields(cls):
            tooltip = option.metadata["tooltip"]
            kind = list(option.metadata["choices"]) if "choices" in option.metadata else "STRING"
            built[option.name] = (kind, {"default": option.default,
                                         "tooltip": tooltip() if callable(tooltip) else tooltip})
        return built

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> "LoadOptions":
        """The options among ``values`` (the node's inputs), by name; the others keep their default."""
        return cls(**{option.name: values[option.name] for option in fields(cls) if option.name in values})


@dataclass(frozen=True)
class Placement:
    """Where the weights live and run, as resolved from the options on this machine."""

    device: torch.device
    dtype: torch.dtype
    use_t5: bool
    offload: str
    # Why this dtype, for the log: auto's reason, or that the user chose it.
    why: str = "chosen"

    def describe(self) -> str:
        return f"{_NAMES[self.dtype]} on {self.device.type} ({self.why})"


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
        raise LocalModelError(f"device: {choice!r} is not available in this PyTorch on this machine; "
                              "choose auto or cpu.")
    return torch.device(choice)


def cpu_bf16() -> str | None:
    """The CPU feature that runs bf16 matrix products in hardware, or None (then bf16 is emulated, slower than fp32)."""
    probes = (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported"))
    for feature, probe in probes:
        check = getattr(torch.cpu, probe, None)
        try:
            if check is not None and check():
                return feature
        except RuntimeError:
            pass
    # ARM's bf16 instructions (BFMMLA), and x86 CPUs on a PyTorch without the probes above.
    flags = _cpu_flags()
    return next((f for f in ("amx_bf16", "avx512_bf16", "bf16") if f in flags), None)


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.lower().startswith(("flags", "features"))
            for flag in line.partition(":")[2].split()}


def auto_dtype(device: torch.device) -> tuple[torch.dtype, str]:
    """What dtype auto means on ``device``, and why: the fastest one SD3 runs correctly in."""
    if device.type == "cpu":
        feature = cpu_bf16()
        if feature is not None:
            return torch.bfloat16, f"this CPU computes bf16 in hardware ({feature})"
        return torch.float32, "this CPU has no hardware bf16 (AVX512-BF16, AMX or ARM BF16), so bf16 would be emulated"
    # Half precision is what SD3 is published in and what GPUs run fast; fp16 works on every one.
    return torch.float16, f"half precision on {device.type}"


def pick_dtype(choice: str, device: torch.device) -> torch.dtype:
    if choice == "auto":
        return auto_dtype(device)[0]
    if choice not in _DTYPES:
        raise LocalModelError(f"dtype: {choice!r} is not one of {', '.join(DTYPES)}.")
    if choice == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise LocalModelError("dtype: 'bf16' is not supported by this GPU; choose fp16 or auto.")
    return _DTYPES[choice]


def dtype_tooltip() -> str:
    """The dtype input's tooltip: the rule, and what auto picks on this machine."""
    try:
        device = pick_device("auto")
    except LocalModelError:
        device = torch.device("cpu")
    dtype, why = auto_dtype(device)
    return (f"auto: fp16 on a GPU; bf16 on a CPU with hardware bf16, else fp32. Here: {_NAMES[dtype]} on "
            f"{device.type}, because {why}. Every component (text encoders included) runs in the one dtype.")


def place(source: ModelSource, options: LoadOptions) -> Placement:
    """Check the options against the model and this machine before anything is loaded."""
    device = pick_device(options.device)
    dtype = pick_dtype(options.dtype, device)
    why = f"dtype auto: {auto_dtype(device)[1]}" if options.dtype == "auto" else f"dtype {options.dtype}"
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
    use_t5 = options.t5 == "on" or (options.t5 == "auto" and source.has_t5)
    return Placement(device, dtype, use_t5, options.offload, why)


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
    log.info("SD3 Img2Img (local): %s runs in %s", source.path.name, placement.describe())
    # Under ComfyUI's model management the weights stay on its offload device until
    # load_models_gpu moves them, making room first.
    if placement.offload == "model":
        pipe.enable_model_cpu_offload(device=placement.device)
    elif placement.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=placement.device)
    elif not local_memory.manages(placement.offload):
        pipe.to(placement.device)
    return pipe


class PipelineCache:
    """One loaded pipeline, kept between runs while the model and options stay the same.

    The node instance owns it, and ComfyUI owns node instances: removing the node or ComfyUI's
    "free model and node cache" drops the instance and so the weights. Inside ComfyUI the
    components are also ComfyUI models (``local_memory``), so its model management offloads them on
    a GPU, and "Unload models" releases them on the CPU.
    """

    def __init__(self, loader: Callable[[ModelSource, LoadOptions], Any] = load) -> None:
        self._loader = loader
        self._key: tuple | None = None
        self._pipe: Any = None
        self._managed: local_memory.Managed | None = None
        # Emptied patchers of a released pipeline, kept until the next load: ComfyUI may release
        # us while it walks its list of loaded models, which their deletion would change.
        self._retired: local_memory.Managed | None = None
        self.placement: Placement | None = None
        self.prompts = local_prompt.PromptCache()
        self.loads = 0

    def get(self, source: ModelSource, options: LoadOptions):
        key = (source.key, options)
        if self._pipe is None or key != self._key:
            self.release()
            self._retired = None
            placement = place(source, options)
            modules = comfy.model_management_modules() if local_memory.manages(placement.offload) else None
            if modules is None:
                # diffusers' offload places weights on the GPU behind ComfyUI's back: make room first.
                comfy.free_models()
            started = time.monotonic()
            self._pipe = self._loader(source, options)
            self._key, self.placement = key, placement
            if modules is not None:
                self._managed = local_memory.Managed(modules, self._pipe, placement.device, self._released_by_comfyui)
            self.loads += 1
            log.info("SD3 Img2Img (local): loaded %s in %.1f s", source.path, time.monotonic() - started)
        return self._pipe

    def ready(self, components: tuple[str, ...]) -> None:
        """Before ``components`` run: loaded onto the device through ComfyUI, which makes room for them."""
        if self._managed is not None:
            self._managed.ready(components)

    def embeddings(self, prompt: str, negative_prompt: str, guided: bool) -> dict[str, torch.Tensor]:
        """The prompt's embeddings (one row each), encoded on the first run with this prompt only."""
        def compute():
            self.ready(local_memory.TEXT_ENCODERS)
            return local_prompt.encode(self._pipe, prompt, negative_prompt, guided, self.placement.device)

        return self.prompts.get((prompt, negative_prompt if guided else None), compute)

    def _released_by_comfyui(self) -> None:
        log.info("SD3 Img2Img (local): ComfyUI unloaded the model; pipeline released")
        self.release()

    def release(self) -> None:
        if self._pipe is None:
            return
        if self._managed is not None:
            self._managed.close()
        self._retired = self._managed
        self._pipe = self._key = self._managed = self.placement = None
        self.prompts = local_prompt.PromptCache()
        gc.collect()
        local_memory.trim_heap()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
