"""What a single-file SD3 checkpoint needs beside its weights, found offline.

diffusers builds a pipeline from a checkpoint in the original layout only with each component's
config and the three tokenizers; without them it downloads the gated Stability AI repository. We
never reach a hub: the configs of SD3 medium ship with the pack (``sd3_medium/``: architecture
numbers only, written for this pack), and the tokenizers come from the user's ComfyUI, which keeps
the CLIP and T5 vocabularies for its own SD3 loader. Other checkpoints (SD3.5) or a ComfyUI
without those files need a folder in diffusers' layout that the user names (``config_path``);
what is missing is said file by file.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from .local_models import LocalModelError, ModelSource

SHIPPED = Path(__file__).with_name("sd3_medium")
CONFIGS = (
    "model_index.json", "scheduler/scheduler_config.json", "transformer/config.json", "vae/config.json",
    "text_encoder/config.json", "text_encoder_2/config.json",
)
T5_CONFIG = "text_encoder_3/config.json"
CLIP_TOKENIZER = ("vocab.json", "merges.txt")
T5_TOKENIZER = "tokenizer.json"  # also accepted in place of CLIP's two files
# SD3's CLIP context; ComfyUI's copy of the tokenizer config says 8192.
CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 256


@dataclass(frozen=True)
class Tokenizers:
    clip: Path  # folder with vocab.json and merges.txt, or tokenizer.json (both CLIPs share one vocabulary)
    t5: Path | None  # folder with tokenizer.json, or None when T5 is off


@dataclass(frozen=True)
class SingleFileConfig:
    folder: Path
    tokenizers: Tokenizers


def comfy_tokenizers() -> tuple[Path, Path] | None:
    """ComfyUI's own CLIP and T5 tokenizer files, when this process runs inside ComfyUI."""
    spec = importlib.util.find_spec("comfy")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / "sd1_tokenizer", root / "text_encoders" / "t5_tokenizer"


def resolve(source: ModelSource, use_t5: bool, config_path: str = "") -> SingleFileConfig:
    """The config folder and tokenizers for ``source``, or an error listing every missing file."""
    if config_path.strip():
        folder = Path(config_path.strip()).expanduser()
        clip = folder / "tokenizer"
        t5 = folder / "tokenizer_3"
        where = f"config_path {str(folder)!r}"
    else:
        if not source.sd3_medium:
            raise LocalModelError(
                f"config_path: empty, but {source.path.name!r} is not SD3 medium (the only layout whose configs "
                "ship with the pack); set config_path to a folder in diffusers' layout for this model (its "
                "model_index.json, */config.json, scheduler/ and tokenizer*/ files; no weights needed)."
            )
        folder = SHIPPED
        found = comfy_tokenizers()
        if found is None:
            raise LocalModelError(
                "config_path: empty, and the tokenizers a single-file checkpoint needs are read from ComfyUI, "
                "which is not running this node; set config_path to a folder in diffusers' layout with "
                "tokenizer/ (vocab.json, merges.txt) and tokenizer_3/tokenizer.json, or use a diffusers folder."
            )
        clip, t5 = found
        where = "ComfyUI's tokenizer folders and the pack's configs"
    needed = [folder / name for name in CONFIGS]
    # A CLIP tokenizer is either the original vocab.json + merges.txt or one tokenizer.json.
    if not (clip / T5_TOKENIZER).is_file():
        needed += [clip / name for name in CLIP_TOKENIZER]
    if use_t5:
        needed += [folder / T5_CONFIG, t5 / T5_TOKENIZER]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise LocalModelError(
            f"config_path: {where} lack(s) what loading {source.path.name!r} needs: {', '.join(missing)}; put "
            "those files there (from the model's diffusers release), or set t5 to off if only T5's are missing."
        )
    return SingleFileConfig(folder, Tokenizers(clip, t5 if use_t5 else None))


def load_tokenizers(tokenizers: Tokenizers) -> dict:
    """The pipeline's tokenizer components, built from plain files with SD3's settings."""
    from transformers import CLIPTokenizer, T5TokenizerFast

    def clip(pad_token: str):
        return CLIPTokenizer.from_pretrained(tokenizers.clip, pad_token=pad_token, model_max_length=CLIP_MAX_LENGTH,
                                             local_files_only=True)

    components = {
        "tokenizer": clip("<|endoftext|>"),
        # SD3's second CLIP (OpenCLIP bigG) pads with "!", as its diffusers release does.
        "tokenizer_2": clip("!"),
    }
    if tokenizers.t5 is not None:
        components["tokenizer_3"] = T5TokenizerFast.from_pretrained(tokenizers.t5, model_max_length=T5_MAX_LENGTH,
                                                                    local_files_only=True)
    return components
