"""ComfyUI IMAGE tensors (B,H,W,C float32 in 0..1): to and from uint8 arrays, and fitted to a size for diffusers."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """One (H,W,C) uint8 array per batch item; C stays 3 (RGB) or 4 (RGBA)."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    _check_batch(images)
    # In numpy, on one core: torch's element-wise ops go parallel, and on a busy machine their
    # threads wait for each other (60 ms against 0.5 ms for a 512x512 picture, measured).
    # Rounding (not truncation) keeps a uint8 -> float -> uint8 round trip exact.
    scaled = np.multiply(images.detach().to("cpu", torch.float32).numpy(), np.float32(255.0))
    np.nan_to_num(scaled, copy=False, nan=0.0)
    np.clip(scaled, 0.0, 255.0, out=scaled)
    data = np.rint(scaled, out=scaled).astype(np.uint8)
    if data.shape[-1] == 1:
        data = np.repeat(data, 3, axis=-1)
    return [np.ascontiguousarray(item) for item in data]


def _check_batch(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"image: expected an IMAGE batch shaped (B,H,W,C) with C 1, 3 or 4, got {tuple(images.shape)}; "
            "connect an IMAGE output such as Load Image."
        )


def from_uint8(arrays: Sequence[np.ndarray], channels: int = 3) -> torch.Tensor:
    """Stack uint8 (H,W,C) arrays into an IMAGE batch with ``channels`` channels.

    Every array must have the same size; the error names the first one that does not.
    """
    if not arrays:
        raise ValueError("no images to stack")
    first = arrays[0].shape[:2]
    for i, arr in enumerate(arrays):
        if arr.shape[:2] != first:
            raise ValueError(
                f"images[{i}] is {arr.shape[1]}x{arr.shape[0]} but images[0] is {first[1]}x{first[0]}: "
                "an IMAGE batch needs one size; set image_size so every result has the same size."
            )
    batch = np.empty((len(arrays), *first, channels), np.float32)
    for i, arr in enumerate(arrays):
        # Divided in numpy, for the reason given in to_uint8; the same float32 values as torch's.
        np.divide(_channels(arr, channels), np.float32(255.0), out=batch[i])
    return torch.from_numpy(batch)


def _channels(arr: np.ndarray, channels: int) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    have = arr.shape[2]
    if have == channels:
        return arr
    if have == 1:
        arr = np.repeat(arr, 3, axis=2)
        have = 3
    if have == 4 and channels == 3:
        return arr[:, :, :3]
    if have == 3 and channels == 4:
        return np.concatenate([arr, np.full(arr.shape[:2] + (1,), 255, np.uint8)], axis=2)
    return arr


def multiple_of_16(side: int) -> int:
    """The nearest multiple of 16 (SD3's latent patch grid), at least 16."""
    return max(16, int(round(side / 16)) * 16)


def fit(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """An IMAGE batch (B,H,W,C) scaled to cover ``width`` x ``height`` and center-cropped to it, as
    the (B,3,height,width) tensor in 0..1 that diffusers' pipelines take."""
    _check_batch(images)
    pixels = images[..., :3] if images.shape[-1] != 1 else images.expand(-1, -1, -1, 3)
    # Left as a permuted view, (B,C,H,W) in channels-last memory: the VAE's convolutions run
    # faster on it than on a contiguous copy (about 10% of a 512x512 run on the CPU).
    pixels = pixels.permute(0, 3, 1, 2).to(torch.float32)
    h, w = pixels.shape[-2:]
    if (h, w) == (height, width):
        return pixels
    scale = max(width / w, height / h)
    scaled_h, scaled_w = max(height, round(h * scale)), max(width, round(w * scale))
    pixels = torch.nn.functional.interpolate(pixels, size=(scaled_h, scaled_w), mode="bicubic",
                                             align_corners=False, antialias=True)
    top, left = (scaled_h - height) // 2, (scaled_w - width) // 2
    return pixels[:, :, top:top + height, left:left + width].clamp(0, 1).contiguous(memory_format=torch.channels_last)
