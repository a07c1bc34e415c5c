"""Which SD3 models the local node can run, and what each one holds, found without diffusers.

Two kinds: a diffusers folder (``model_index.json`` and one subfolder a component), as kept in
ComfyUI's ``models/diffusers``, and a single-file ``.safetensors`` checkpoint in the original SD3
layout, as kept in ``models/checkpoints``. A checkpoint's contents are read from its safetensors
header alone (a few kilobytes), so listing and checking models loads no weights.
"""

from __future__ import annotations

import functools
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from . import comfy

CUSTOM_PATH = "custom path"
# The menu's first entry when no SD3 model is in ComfyUI's folders: it says where to put one.
NO_MODEL = "no SD3 model found: add one (see the tooltip), then press R"
# What a user downloads (Stability AI's release): the checkpoints ComfyUI keeps, and the diffusers folder.
CHECKPOINT_FILES = ("sd3_medium_incl_clips.safetensors", "sd3_medium_incl_clips_t5xxlfp8.safetensors")
DIFFUSERS_FOLDER = "stable-diffusion-3-medium-diffusers"
DIFFUSERS, CHECKPOINTS = "diffusers", "checkpoints"
FOLDER, CHECKPOINT = "folder", "checkpoint"

# Keys of the original SD3 layout (the one Stability AI ships and ComfyUI loads).
_MMDIT = "model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias"
_CLIP_L = "text_encoders.clip_l.transformer.text_model.embeddings.position_embedding.weight"
_CLIP_G = "text_encoders.clip_g.transformer.text_model.embeddings.position_embedding.weight"
_T5 = "text_encoders.t5xxl.transformer.shared.weight"
# SD3.5 adds a second attention to the first blocks; medium SD3 has 24 joint blocks.
_DUAL_ATTENTION = "model.diffusion_model.joint_blocks.0.x_block.attn2.qkv.weight"
SD3_MEDIUM_BLOCKS = 24
# A safetensors header is JSON; a larger one is not a checkpoint we can read.
_MAX_HEADER = 64 << 20


class LocalModelError(ValueError):
    """A model that cannot be used, with what to do about it."""


@dataclass(frozen=True)
class ModelSource:
    path: Path
    kind: str  # FOLDER or CHECKPOINT
    has_t5: bool
    # Only for checkpoints: whether it is SD3 medium, the layout the pack's shipped configs describe.
    sd3_medium: bool = True

    @property
    def key(self) -> tuple:
        """What identifies the weights: the path and the file's (or index's) size and time."""
        stat = (self.path / "model_index.json" if self.kind == FOLDER else self.path).stat()
        return (str(self.path), stat.st_size, stat.st_mtime_ns)


def choices() -> list[str]:
    """The model menu: SD3 diffusers folders, then SD3 checkpoints, then "custom path"."""
    found = []
    for root in comfy.model_folders(DIFFUSERS):
        if root.is_dir():
            found += [f"{DIFFUSERS}/{p.name}" for p in sorted(root.iterdir()) if _is_sd3_folder(p)]
    for root in comfy.model_folders(CHECKPOINTS):
        if root.is_dir():
            found += [f"{CHECKPOINTS}/{p.relative_to(root).as_posix()}"
                      for p in sorted(root.rglob("*.safetensors")) if _is_sd3_checkpoint(p)]
    return [*dict.fromkeys(found), CUSTOM_PATH] if found else [NO_MODEL, CUSTOM_PATH]


def where_to_add() -> str:
    """Which folder gets which files, with this ComfyUI's own folder paths."""
    def folder(kind: str) -> str:
        roots = comfy.model_folders(kind)
        return str(roots[0]) if roots else f"ComfyUI/models/{kind}"

    return (
        f"put {CHECKPOINT_FILES[0]} (CLIP encoders only) or {CHECKPOINT_FILES[1]} (with T5) into "
        f"{folder(CHECKPOINTS)}, or a diffusers folder such as {DIFFUSERS_FOLDER} (with its model_index.json, "
        f"transformer/, vae/, text_encoder*/, tokenizer*/ and scheduler/) into {folder(DIFFUSERS)}"
    )


def resolve(model: str, model_path: str = "") -> ModelSource:
    """The model a node's ``model`` / ``model_path`` inputs name, checked; ``model_path`` wins."""
    if model_path.strip():
        path = Path(model_path.strip()).expanduser()
        if not path.exists():
            raise LocalModelError(
                f"model_path: {str(path)!r} does not exist; give a diffusers folder (the one holding "
                "model_index.json) or an SD3 .safetensors checkpoint."
            )
        return inspect(path, "model_path")
    if model == NO_MODEL:
        raise LocalModelError(
            f"model: no SD3 model was found in ComfyUI's model folders; {where_to_add()}. Then press R in the "
            "editor to refresh the list, or set model_path to a model elsewhere on disk."
        )
    if model == CUSTOM_PATH:
        raise LocalModelError(
            "model_path: empty while model is 'custom path'; give the path of an SD3 diffusers folder or "
            "checkpoint, or pick a model from the list."
        )
    kind, _, name = model.partition("/")
    if kind not in (DIFFUSERS, CHECKPOINTS) or not name:
        raise LocalModelError(f"model: {model!r} is not a model of this list; pick one again or set model_path.")
    roots = comfy.model_folders(kind)
    for root in roots:
        if (root / name).exists():
            return inspect(root / name, "model")
    where = ", ".join(str(r) for r in roots) or f"ComfyUI's models/{kind}"
    raise LocalModelError(
        f"model: {model!r} was not found in {where}; put it there (then press R in the editor to refresh) "
        "or set model_path."
    )


def inspect(path: Path, field: str) -> ModelSource:
    if path.is_dir():
        return _folder(path, field)
    return _checkpoint(path, field)


def _folder(path: Path, field: str) -> ModelSource:
    index = path / "model_index.json"
    if not index.is_file():
        raise LocalModelError(
            f"{field}: {str(path)!r} is not a diffusers model folder (it has no model_index.json); give the "
            "folder a diffusers model was saved to, e.g. stable-diffusion-3-medium-diffusers."
        )
    try:
        spec = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LocalModelError(
            f"{field}: {str(index)!r} cannot be read as JSON ({exc}); download the model again.") from exc
    pipeline = str(spec.get("_class_name", "?"))
    if not pipeline.startswith("StableDiffusion3"):
        raise LocalModelError(
            f"{field}: {str(path)!r} holds a {pipeline} model, not Stable Diffusion 3; give an SD3 model folder."
        )
    components = {name for name, value in spec.items()
                  if not name.startswith("_") and isinstance(value, list) and value[0] is not None}
    missing = sorted(name for name in components - {"image_encoder", "feature_extractor"}
                     if not (path / name).is_dir())
    if missing:
        raise LocalModelError(
            f"{field}: {str(path)!r} lacks the subfolder(s) {', '.join(m + '/' for m in missing)} that its "
            "model_index.json lists; the download is incomplete: fetch those folders into it."
        )
    return ModelSource(path, FOLDER, has_t5="text_encoder_3" in components)


def _checkpoint(path: Path, field: str) -> ModelSource:
    if path.suffix.lower() != ".safetensors":
        raise LocalModelError(
            f"{field}: {path.name!r} is not a .safetensors file; the local node loads SD3 checkpoints in "
            "safetensors format only (pickled .ckpt/.pt files can run code when loaded)."
        )
    keys = _header_keys(path)
    if keys is None:
        raise LocalModelError(f"{field}: {str(path)!r} is not a readable safetensors file; download it again.")
    if _MMDIT not in keys:
        raise LocalModelError(
            f"{field}: {path.name!r} is not a Stable Diffusion 3 checkpoint ({_guess(keys)}); pick an SD3 "
            "checkpoint such as sd3_medium_incl_clips_t5xxlfp8.safetensors."
        )
    if _CLIP_L not in keys or _CLIP_G not in keys:
        raise LocalModelError(
            f"{field}: {path.name!r} holds the SD3 transformer but not its CLIP text encoders; use "
            "sd3_medium_incl_clips.safetensors or sd3_medium_incl_clips_t5xxlfp8.safetensors, or a diffusers folder."
        )
    blocks = {k.split(".")[3] for k in keys if k.startswith("model.diffusion_model.joint_blocks.")}
    medium = len(blocks) == SD3_MEDIUM_BLOCKS and _DUAL_ATTENTION not in keys
    return ModelSource(path, CHECKPOINT, has_t5=_T5 in keys, sd3_medium=medium)


def _guess(keys: set[str]) -> str:
    if any(k.startswith("double_blocks.") or ".double_blocks." in k for k in keys):
        return "it looks like a Flux model"
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return "it looks like an SDXL checkpoint"
    if any(k.startswith("cond_stage_model.") for k in keys):
        return "it looks like a Stable Diffusion 1.x/2.x checkpoint"
    return "it has no MMDiT joint_blocks"


def _header_keys(path: Path) -> set[str] | None:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                return None
            (size,) = struct.unpack("<Q", head)
            if size > _MAX_HEADER:
                return None
            header = json.loads(f.read(size))
    except (OSError, ValueError):
        return None
    return set(header) - {"__metadata__"} if isinstance(header, dict) else None


def _is_sd3_folder(path: Path) -> bool:
    try:
        return json.loads((path / "model_index.json").read_text(encoding="utf-8")).get(
            "_class_name", "").startswith("StableDiffusion3")
    except (OSError, ValueError, AttributeError):
        return False


def _is_sd3_checkpoint(path: Path) -> bool:
    try:
        stat = path.stat()
    except OSError:
        return False
    return _has_mmdit(str(path), stat.st_size, stat.st_mtime_ns)


# ComfyUI calls INPUT_TYPES (so the menu) on every queued prompt: a file's header is read once
# per version of the file (its size and time), not once per prompt.
@functools.lru_cache(maxsize=1024)
def _has_mmdit(path: str, size: int, mtime_ns: int) -> bool:
    keys = _header_keys(Path(path))
    return keys is not None and _MMDIT in keys
