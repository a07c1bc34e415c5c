"""Prompt embeddings for the local pipeline: the context ComfyUI's SD3 builds, encoded once per prompt.

diffusers pads the context with T5 rows up to ``max_sequence_length`` (256), as zeros when T5 is off.
Those rows are not inert: the transformer's context projection turns each into its bias vector, and
every block attends over them. ComfyUI's SD3 uses the 77 CLIP rows alone without T5, and with T5 pads
its tokens to 77 (never truncating). We build the same context: the same result as ComfyUI's, and
without T5 256 fewer tokens in every attention (1,101 instead of 1,357 at 512x512).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch

# ComfyUI's T5XXLTokenizer: min_length 77, no maximum; diffusers' pipelines allow at most 512.
T5_MIN_TOKENS = 77
T5_MAX_TOKENS = 512
NAMES = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")


def t5_rows(pipe, prompts: tuple[str, ...]) -> int:
    """How many T5 rows the context gets: none without T5, else what the longest prompt needs, at least 77."""
    if pipe.text_encoder_3 is None:
        return 0
    tokens = max(len(pipe.tokenizer_3(text).input_ids) for text in prompts)
    return min(T5_MAX_TOKENS, max(T5_MIN_TOKENS, tokens))


def encode(pipe, prompt: str, negative_prompt: str, guided: bool, device: torch.device) -> dict[str, torch.Tensor]:
    """One row of each embedding the pipeline takes, in the transformer's dtype on ``device``."""
    rows = t5_rows(pipe, (prompt, negative_prompt) if guided else (prompt,))
    values = pipe.encode_prompt(
        prompt=prompt, prompt_2=None, prompt_3=None, negative_prompt=negative_prompt, device=device,
        num_images_per_prompt=1, do_classifier_free_guidance=guided, max_sequence_length=rows,
    )
    dtype = pipe.transformer.dtype
    return {name: value.to(device, dtype) for name, value in zip(NAMES, values, strict=True) if value is not None}


def repeated(embeddings: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
    """The embeddings for ``count`` images per prompt (the pipeline then makes one image per row)."""
    return {name: value.repeat(count, *(1,) * (value.dim() - 1)) for name, value in embeddings.items()}


class PromptCache:
    """The embeddings of the last few prompts, for the one loaded pipeline that owns the cache.

    ComfyUI's graph caches the native path's conditioning the same way: a rerun with a new seed or
    strength does not run the text encoders again.
    """

    SIZE = 8

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple, dict[str, torch.Tensor]] = OrderedDict()
        self.encodes = 0

    def get(self, key: tuple, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        value = self._entries[key] = compute()
        self.encodes += 1
        while len(self._entries) > self.SIZE:
            self._entries.popitem(last=False)
        return value
