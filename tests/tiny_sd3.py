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
        "text_encoder": clip_encoder(CLIP_L_WIDTH, len(tokenizer), eos),
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
