"""The local pipeline's weights under ComfyUI's model management, as ComfyUI's own models are.

Each component (transformer, VAE, text encoders) is registered as a ``comfy.model_patcher.ModelPatcher``
with ComfyUI's load and offload devices, and is loaded through ``comfy.model_management.load_models_gpu``
right before it runs. On a GPU, ComfyUI then makes room for its own models by offloading ours to the
CPU, as it does with any of its models, and moves ours back when the node runs again.

On the CPU, ComfyUI's offload device is the CPU itself: its unloading would move weights to where they
already are and free nothing. There, when ComfyUI unloads one of our components ("Unload models",
``--disable-smart-memory``, a node asking ``free_memory`` for RAM), the whole pipeline is released instead:
dropped, garbage-collected and its freed heap handed back to the system.
"""

from __future__ import annotations

import ctypes
import platform
from typing import Any, Callable

import torch

from . import comfy

# Which ComfyUI function names each component's offload device (their rules differ with --gpu-only
# and --highvram).
OFFLOAD_DEVICES = {
    "transformer": "unet_offload_device",
    "vae": "vae_offload_device",
    "text_encoder": "text_encoder_offload_device",
    "text_encoder_2": "text_encoder_offload_device",
    "text_encoder_3": "text_encoder_offload_device",
}
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
DENOISING = ("transformer", "vae")


class SD3Component(torch.nn.Module):
    """One pipeline component as ComfyUI's ModelPatcher handles it.

    ModelPatcher writes ``model.device``, which diffusers' and transformers' models expose read-only;
    this holder has it as a plain attribute, and can let go of the component when the pipeline is
    released while ComfyUI still lists it.
    """

    def __init__(self, name: str, module: torch.nn.Module, device: torch.device) -> None:
        super().__init__()
        self.name = name
        self.inner = module
        self.device = device

    def empty(self) -> None:
        if "inner" in self._modules:
            del self._modules["inner"]
        self.model_loaded_weight_memory = 0


def _patcher_class(model_patcher):
    class PipelinePatcher(model_patcher.ModelPatcher):
        """A ModelPatcher whose partial unload on the CPU releases the pipeline (moving to the CPU frees nothing)."""

        release: Callable[[], None] | None = None

        def partially_unload(self, device_to, memory_to_free=0):
            if self.load_device.type == "cpu" and self.release is not None:
                # ComfyUI asks for part of a model only when that part is smaller than the model.
                freed = self.loaded_size()
                self.release()
                return freed
            return super().partially_unload(device_to, memory_to_free)

    return PipelinePatcher


class Managed:
    """The pipeline's components as ComfyUI models; ``ready`` loads some onto the device before they run."""

    def __init__(self, comfy_modules: tuple, pipe, device: torch.device, on_release: Callable[[], None]) -> None:
        mm, mp = comfy_modules
        patcher_class = _patcher_class(mp)
        self._mm = mm
        self.patchers: dict[str, Any] = {}
        for name, offload in OFFLOAD_DEVICES.items():
            module = getattr(pipe, name, None)
            if not isinstance(module, torch.nn.Module):
                continue
            offload_device = getattr(mm, offload)()
            holder = SD3Component(name, module, offload_device)
            patcher = patcher_class(holder, load_device=device, offload_device=offload_device)
            patcher.release = on_release
            patcher.add_callback(mp.CallbacksMP.ON_DETACH, _on_detach(on_release))
            self.patchers[name] = patcher

    def ready(self, names: tuple[str, ...]) -> None:
        wanted = [self.patchers[n] for n in names if n in self.patchers]
        # Whole components: diffusers' layers cannot run with part of their weights elsewhere,
        # as ComfyUI's own low-VRAM layers can; ComfyUI frees room for them all.
        self._mm.load_models_gpu(wanted, force_full_load=True)

    def close(self) -> None:
        """Let go of the weights; the (empty) patchers stay registered until ComfyUI drops them."""
        for patcher in self.patchers.values():
            patcher.release = None
            patcher.model.empty()
            patcher.size = 0


def _on_detach(on_release: Callable[[], None]):
    def detached(patcher, unpatch_all: bool) -> None:
        # unpatch_all is False when ComfyUI only re-registers a patcher or one is deleted.
        if unpatch_all and patcher.load_device.type == "cpu" and patcher.release is not None:
            patcher.release()
    return detached


def manages(offload: str) -> bool:
    """Whether ComfyUI's model management places this pipeline (inside ComfyUI, without diffusers' offload)."""
    return offload == "none" and comfy.model_management_modules() is not None


def trim_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc keeps them otherwise; the RSS stays high)."""
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        ctypes.CDLL("libc.so.6").malloc_trim(0)
