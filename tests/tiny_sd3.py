"""A tiny Stable Diffusion 3 img2img pipeline with random weights, built offline.

Every component has SD3's architecture at toy sizes: the MMDiT transformer, a 4-block VAE (so the
latent scale factor is 8, as in the real model), CLIP-L and CLIP-G text encoders with projections
(CLIP-L narrower than CLIP-G, as in the real one) and a T5 encoder. The tokenizers are built here
from a hand-written vocabulary: nothing is downloaded. Saved with ``save_pretrained``, the folder
has the layout of a real diffusers SD3 model, so the node loads it the way it loads a user's.

Built at test time, never committed: the same seed gives other weights in another transformers.
"""

from __future__ import annotations

import string
from pathlib import Path

CLIP_L_WIDTH, CLIP_G_WIDTH = 32, 48
PROJECTION = 32
# The transformer's context width: SD3 pads the concatenated CLIP states up to T5's width.
JOINT_WIDTH = CLIP_L_WIDTH + CLIP_G_WIDTH
HEADS, HEAD_DIM = 2, 8


def clip_tokenizer(pad_token: str):
    from transformers import CLIPTokenizer

    letters = list(string.ascii_lowercase + string.digits)
    # CLIP's BPE marks the end of a word with </w>; the merges spell a few whole words so that the
    # merge path is exercised, and fixed merges keep the tokenizer deterministic.
    words = ["the", "cat", "dog", "red", "blue"]
    merges: list[tuple[str, str]] = []
    pieces: list[str] = []
    for word in words:
        current = word[0]
        for i in range(1, len(word)):
            right = word[i] + ("</w>" if i == len(word) - 1 else "")
            merges.append((current, right))
            current += right
            pieces.append(current)
    tokens = ["<|startoftext|>", "<|endoftext|>", "!", *letters, *(c + "</w>" for c in letters), *pieces]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=77)


def t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    pieces += [(c, -2.0) for c in string.ascii_lowercase + string.digits]
    pieces += [("▁" + w, -1.5) for w in ("the", "cat", "dog", "red", "blue")]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=256)


def clip_encoder(width: int, vocab_size: int, eos_id: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=4, projection_dim=PROJECTION, max_position_embeddings=77,
        hidden_act="quick_gelu", bos_token_id=0, eos_token_id=eos_id, pad_token_id=1,
    ))


def build(seed: int = 0) -> dict:
    """The pipeline's components, with random weights drawn from ``seed``."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer, tokenizer_2, tokenizer_3 = clip_tokenizer("<|endoftext|>"), clip_tokenizer("!"), t5_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    clip_l = clip_encoder(CLIP_L_WIDTH, len(tokenizer), eos)
    # SD3's CLIP-L has an identity projection (single-file checkpoints do not store it).
    with torch.no_grad():
        clip_l.text_projection.weight.copy_(torch.eye(PROJECTION, CLIP_L_WIDTH))
    return {
        "transformer": SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
            attention_head_dim=HEAD_DIM, num_attention_heads=HEADS, joint_attention_dim=JOINT_WIDTH,
            caption_projection_dim=HEADS * HEAD_DIM, pooled_projection_dim=2 * PROJECTION,
            # Room for pictures up to 512 px: 512 / 8 (VAE) / 2 (patch) = 32 patches a side.
            pos_embed_max_size=32,
        ),
        "vae": AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4,
            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
            block_out_channels=[8, 8, 8, 8], use_quant_conv=False, use_post_quant_conv=False,
            scaling_factor=1.5305, shift_factor=0.0609,
        ),
        "scheduler": FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        "text_encoder": clip_l,
        "text_encoder_2": clip_encoder(CLIP_G_WIDTH, len(tokenizer_2), eos),
        "text_encoder_3": T5EncoderModel(T5Config(
            vocab_size=len(tokenizer_3), d_model=JOINT_WIDTH, d_ff=64, d_kv=8, num_layers=2, num_heads=2,
            relative_attention_num_buckets=8, decoder_start_token_id=0,
        )),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "tokenizer_3": tokenizer_3,
    }


def save(folder: Path, seed: int = 0) -> Path:
    """Write the tiny pipeline to ``folder`` in diffusers' layout and return the folder."""
    from diffusers import StableDiffusion3Img2ImgPipeline

    StableDiffusion3Img2ImgPipeline(**build(seed)).save_pretrained(folder)
    return folder


# --- the same weights as a single-file checkpoint in the original SD3 layout ---------------
# The inverse of diffusers' single-file conversion, so that the node's checkpoint path (the one
# ComfyUI users' models/checkpoints take) is tested on weights whose right output is known.

def _transformer_to_original(sd: dict, layers: int) -> dict:
    import torch

    def swap(t):  # diffusers stores the final modulation as (scale, shift); SD3 as (shift, scale)
        a, b = t.chunk(2, dim=0)
        return torch.cat([b, a], dim=0)

    out = {
        "pos_embed": sd["pos_embed.pos_embed"],
        "x_embedder.proj.weight": sd["pos_embed.proj.weight"], "x_embedder.proj.bias": sd["pos_embed.proj.bias"],
        "context_embedder.weight": sd["context_embedder.weight"], "context_embedder.bias": sd["context_embedder.bias"],
        "final_layer.linear.weight": sd["proj_out.weight"], "final_layer.linear.bias": sd["proj_out.bias"],
        "final_layer.adaLN_modulation.1.weight": swap(sd["norm_out.linear.weight"]),
        "final_layer.adaLN_modulation.1.bias": swap(sd["norm_out.linear.bias"]),
    }
    for ours, theirs in (("t_embedder", "timestep_embedder"), ("y_embedder", "text_embedder")):
        for n, m in (("0", "linear_1"), ("2", "linear_2")):
            for p in ("weight", "bias"):
                out[f"{ours}.mlp.{n}.{p}"] = sd[f"time_text_embed.{theirs}.{m}.{p}"]
    for i in range(layers):
        b, last = f"transformer_blocks.{i}", i == layers - 1
        x, c = f"joint_blocks.{i}.x_block", f"joint_blocks.{i}.context_block"
        for p in ("weight", "bias"):
            out[f"{x}.attn.qkv.{p}"] = torch.cat([sd[f"{b}.attn.to_{k}.{p}"] for k in "qkv"])
            out[f"{c}.attn.qkv.{p}"] = torch.cat([sd[f"{b}.attn.add_{k}_proj.{p}"] for k in "qkv"])
            out[f"{x}.attn.proj.{p}"] = sd[f"{b}.attn.to_out.0.{p}"]
            out[f"{x}.adaLN_modulation.1.{p}"] = sd[f"{b}.norm1.linear.{p}"]
            context_mod = sd[f"{b}.norm1_context.linear.{p}"]
            out[f"{c}.adaLN_modulation.1.{p}"] = swap(context_mod) if last else context_mod
            out[f"{x}.mlp.fc1.{p}"] = sd[f"{b}.ff.net.0.proj.{p}"]
            out[f"{x}.mlp.fc2.{p}"] = sd[f"{b}.ff.net.2.{p}"]
            if not last:
                out[f"{c}.attn.proj.{p}"] = sd[f"{b}.attn.to_add_out.{p}"]
                out[f"{c}.mlp.fc1.{p}"] = sd[f"{b}.ff_context.net.0.proj.{p}"]
                out[f"{c}.mlp.fc2.{p}"] = sd[f"{b}.ff_context.net.2.{p}"]
    return {f"model.diffusion_model.{k}": v.contiguous() for k, v in out.items()}


def _vae_to_original(sd: dict, blocks: int) -> dict:
    import re

    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    rules = [
        (r"down_blocks\.(\d+)\.resnets\.", r"down.\1.block."),
        (r"down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.downsample."),
        (r"up_blocks\.(\d+)\.resnets\.", lambda m: f"up.{blocks - 1 - int(m[1])}.block."),
        (r"up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"up.{blocks - 1 - int(m[1])}.upsample."),
        (r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}."),
        (r"mid_block\.attentions\.0\.", "mid.attn_1."),
        (r"conv_shortcut", "nin_shortcut"), (r"group_norm\.", "norm."), (r"to_out\.0\.", "proj_out."),
        (r"\.to_([qkv])\.", r".\1."),
    ]
    out = {}
    for key, value in sd.items():
        if key in fixed:
            out[fixed[key]] = value
            continue
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return {f"first_stage_model.{k}": v.contiguous() for k, v in out.items()}


def save_single_file(path: Path, seed: int = 0, with_t5: bool = True) -> Path:
    """The pipeline ``build(seed)`` makes, as one .safetensors file in the original SD3 layout."""
    from safetensors.torch import save_file

    parts = build(seed)
    transformer = parts["transformer"]
    tensors = {
        **_transformer_to_original(transformer.state_dict(), transformer.config.num_layers),
        **_vae_to_original(parts["vae"].state_dict(), len(parts["vae"].config.down_block_types)),
    }
    encoders = {"clip_l": "text_encoder", "clip_g": "text_encoder_2",
                **({"t5xxl": "text_encoder_3"} if with_t5 else {})}
    for name, component in encoders.items():
        for key, value in parts[component].state_dict().items():
            tensors[f"text_encoders.{name}.transformer.{key}"] = value.clone()  # T5 ties two names to one tensor
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path
