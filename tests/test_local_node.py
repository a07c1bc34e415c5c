"""SD3 Img2Img (local diffusers) on a tiny random-weight SD3 built offline, on the CPU."""

import json
import struct
import sys

import pytest
import torch

from comfyui_fal_sd3.nodes import comfy, local_models, local_pipeline, single_file
from comfyui_fal_sd3.nodes.local_img2img import DiffusersSD3Img2Img
from comfyui_fal_sd3.nodes.local_models import CUSTOM_PATH, LocalModelError
from comfyui_fal_sd3.nodes.local_pipeline import LoadOptions, load, place
from comfyui_fal_sd3.fal_core.schema import ImageSize

PROMPT = "a red cat"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    pytest.importorskip("diffusers")
    import tiny_sd3

    return tiny_sd3.save(tmp_path_factory.mktemp("models") / "tiny-sd3")


@pytest.fixture(scope="module")
def tiny_checkpoints(tiny_model):
    """The tiny model's weights as single-file checkpoints in the original SD3 layout, with and without T5."""
    import tiny_sd3

    folder = tiny_model.parent / "checkpoints"
    return (tiny_sd3.save_single_file(folder / "tiny_sd3_incl_clips_t5.safetensors"),
            tiny_sd3.save_single_file(folder / "tiny_sd3_incl_clips.safetensors", with_t5=False))


@pytest.fixture
def node():
    return DiffusersSD3Img2Img()


def picture(batch=1, height=64, width=96, seed=0):
    return torch.rand(batch, height, width, 3, generator=torch.Generator().manual_seed(seed))


def run(node, model, image=None, **overrides):
    args = dict(prompt=PROMPT, negative_prompt="", num_inference_steps=4, seed=7, guidance_scale=5.0,
                num_images=1, strength=0.75, model_path=str(model))
    args.update(overrides)
    return node.run(CUSTOM_PATH, picture() if image is None else image, **args)


class StepCounter:
    """Counts the transformer's forward passes (one per denoising step) and the VAE decodes."""

    def __init__(self, pipe):
        self.steps = 0
        self.decodes = 0
        self._hooks = [pipe.transformer.register_forward_hook(self._step),
                       pipe.vae.decoder.register_forward_hook(self._decode)]

    def _step(self, *_):
        self.steps += 1

    def _decode(self, *_):
        self.decodes += 1

    def remove(self):
        for hook in self._hooks:
            hook.remove()


def counted(node, tiny_model):
    run(node, tiny_model, num_inference_steps=1)
    return StepCounter(node.cache._pipe)


def test_output_is_an_image_batch_in_input_order(node, tiny_model):
    images, seed = run(node, tiny_model, image=picture(batch=2, height=70, width=100), num_images=2)
    # 70x100 rounds to the nearest multiples of 16; 2 pictures x 2 images each.
    assert images.shape == (4, 64, 96, 3)
    assert images.dtype == torch.float32
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert seed == 7


def test_image_size_scales_and_crops_to_the_target(node, tiny_model):
    images, _ = run(node, tiny_model, image=picture(height=80, width=80), image_size=ImageSize(width=128, height=64))
    assert images.shape == (1, 64, 128, 3)


def test_same_seed_same_pixels_other_seed_other_pixels(node, tiny_model):
    first, _ = run(node, tiny_model, seed=11)
    again, _ = run(DiffusersSD3Img2Img(), tiny_model, seed=11)
    other, _ = run(node, tiny_model, seed=12)
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-3


def test_batch_item_i_uses_seed_plus_i(node, tiny_model):
    pictures = picture(batch=2)
    batch, _ = run(node, tiny_model, image=pictures, seed=20)
    second_alone, _ = run(node, tiny_model, image=pictures[1:], seed=21)
    assert torch.allclose(batch[1:], second_alone, atol=1e-5)
    assert (batch[0] - batch[1]).abs().max() > 1e-3


def test_strength_sets_how_many_steps_run(node, tiny_model):
    counter = counted(node, tiny_model)
    try:
        for strength, expected in ((1.0, 10), (0.5, 5), (0.25, 3)):
            counter.steps = 0
            run(node, tiny_model, num_inference_steps=10, strength=strength)
            assert counter.steps == expected, strength
    finally:
        counter.remove()


def test_interrupt_stops_within_one_step_and_skips_the_decode(node, tiny_model, monkeypatch):
    counter = counted(node, tiny_model)
    counter.steps = counter.decodes = 0
    monkeypatch.setattr(comfy, "interrupted", lambda: counter.steps >= 2)
    try:
        with pytest.raises(comfy.Interrupted):
            run(node, tiny_model, num_inference_steps=20, strength=1.0)
    finally:
        counter.remove()
    assert counter.steps == 2
    assert counter.decodes == 0


def test_the_pipeline_is_loaded_once_and_reloaded_when_options_change(node, tiny_model):
    run(node, tiny_model)
    run(node, tiny_model, seed=99)
    assert node.cache.loads == 1
    run(node, tiny_model, t5="off")
    assert node.cache.loads == 2
    assert node.cache._pipe.text_encoder_3 is None


def test_t5_off_still_generates(node, tiny_model):
    images, _ = run(node, tiny_model, t5="off")
    assert images.shape == (1, 64, 96, 3)


def test_model_menu_lists_sd3_folders_and_checkpoints_only(tiny_model, tmp_path, monkeypatch):
    diffusers_dir, checkpoints = tmp_path / "diffusers", tmp_path / "checkpoints"
    diffusers_dir.mkdir()
    (diffusers_dir / "tiny").symlink_to(tiny_model, target_is_directory=True)
    (diffusers_dir / "not-a-model").mkdir()
    write_checkpoint(checkpoints / "sd3" / "sd3_medium_incl_clips.safetensors", SD3_KEYS)
    write_checkpoint(checkpoints / "sdxl.safetensors", SDXL_KEYS)
    monkeypatch.setattr(comfy, "model_folders", lambda kind: [tmp_path / kind])
    assert local_models.choices() == ["diffusers/tiny", "checkpoints/sd3/sd3_medium_incl_clips.safetensors",
                                      CUSTOM_PATH]
    images, _ = DiffusersSD3Img2Img().run("diffusers/tiny", picture(), prompt=PROMPT, negative_prompt="",
                                          num_inference_steps=2, seed=1, guidance_scale=5.0, num_images=1,
                                          strength=1.0)
    assert images.shape == (1, 64, 96, 3)


def test_with_no_sd3_model_the_menu_and_the_error_say_which_folder_gets_which_files(node, tmp_path, monkeypatch):
    (tmp_path / "checkpoints").mkdir()
    write_checkpoint(tmp_path / "checkpoints" / "sdxl.safetensors", SDXL_KEYS)
    monkeypatch.setattr(comfy, "model_folders", lambda kind: [tmp_path / kind])
    menu, options = DiffusersSD3Img2Img.INPUT_TYPES()["required"]["model"]
    assert menu == [local_models.NO_MODEL, CUSTOM_PATH]
    message = error_of(node, "", model=menu[0])
    for text in (options["tooltip"], message):
        assert str(tmp_path / "checkpoints") in text and str(tmp_path / "diffusers") in text
        assert "sd3_medium_incl_clips_t5xxlfp8.safetensors" in text and "model_index.json" in text
    assert message.startswith("model: no SD3 model was found")


# --- what a user gets wrong, each with a clear message -------------------------------------

# The names of SD3 medium's 24 joint blocks and its CLIP encoders (T5 left out, as in
# sd3_medium_incl_clips.safetensors).
SD3_KEYS = [
    *(f"model.diffusion_model.joint_blocks.{i}.context_block.adaLN_modulation.1.bias" for i in range(24)),
    local_models._CLIP_L,
    local_models._CLIP_G,
]
SDXL_KEYS = ["conditioner.embedders.1.model.positional_embedding", "model.diffusion_model.input_blocks.0.0.weight"]


def write_checkpoint(path, keys):
    """A safetensors file with the given tensor names (tiny tensors: only the header matters)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {key: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i, key in enumerate(keys)}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(4 * len(keys)))
    return path


def error_of(node, model_path, model=CUSTOM_PATH, **overrides):
    with pytest.raises(LocalModelError) as info:
        args = dict(prompt=PROMPT, negative_prompt="", num_inference_steps=2, seed=1, guidance_scale=5.0,
                    num_images=1, strength=0.5, model_path=str(model_path))
        args.update(overrides)
        node.run(model, picture(), **args)
    return str(info.value)


def test_missing_model_path(node, tmp_path):
    message = error_of(node, tmp_path / "nowhere")
    assert "model_path" in message and "does not exist" in message and str(tmp_path / "nowhere") in message


def test_custom_path_without_a_path(node):
    assert "model_path: empty" in error_of(node, "")


def test_model_not_in_comfyui_folders(node, tmp_path, monkeypatch):
    monkeypatch.setattr(comfy, "model_folders", lambda kind: [tmp_path / kind])
    message = error_of(node, "", model="diffusers/sd3-medium")
    assert "'diffusers/sd3-medium' was not found" in message and str(tmp_path / "diffusers") in message


def test_folder_without_model_index(node, tmp_path):
    message = error_of(node, tmp_path)
    assert "not a diffusers model folder" in message and "model_index.json" in message


def test_folder_of_another_model(node, tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    assert "holds a StableDiffusionXLPipeline model, not Stable Diffusion 3" in error_of(node, tmp_path)


def test_incomplete_download_names_the_missing_folders(node, tiny_model, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "model_index.json").write_bytes((tiny_model / "model_index.json").read_bytes())
    (partial / "vae").symlink_to(tiny_model / "vae", target_is_directory=True)
    message = error_of(node, partial)
    assert "transformer/" in message and "text_encoder/" in message and "vae/" not in message


def test_non_sd3_checkpoint(node, tmp_path):
    message = error_of(node, write_checkpoint(tmp_path / "juggernaut.safetensors", SDXL_KEYS))
    assert "not a Stable Diffusion 3 checkpoint" in message and "SDXL" in message


def test_sd3_checkpoint_without_clips(node, tmp_path):
    message = error_of(node, write_checkpoint(tmp_path / "sd3_medium.safetensors", SD3_KEYS[:24]))
    assert "not its CLIP text encoders" in message and "incl_clips" in message


def test_pickled_checkpoint_is_refused(node, tmp_path):
    (tmp_path / "model.ckpt").write_bytes(b"not loaded")
    assert "safetensors format only" in error_of(node, tmp_path / "model.ckpt")


def test_corrupt_checkpoint(node, tmp_path):
    (tmp_path / "broken.safetensors").write_bytes(b"\xff" * 16)
    assert "not a readable safetensors file" in error_of(node, tmp_path / "broken.safetensors")


def test_t5_on_for_a_model_without_t5(node, tmp_path):
    message = error_of(node, write_checkpoint(tmp_path / "sd3_medium_incl_clips.safetensors", SD3_KEYS), t5="on")
    assert "t5: 'on'" in message and "no T5 text encoder" in message


def test_offload_needs_a_gpu(node, tiny_model):
    assert "set offload to none" in error_of(node, tiny_model, device="cpu", offload="model")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device(node, tiny_model):
    assert "device: 'cuda' is not available" in error_of(node, tiny_model, device="cuda")


def test_missing_diffusers_gives_the_install_command(node, tmp_path, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    monkeypatch.setitem(sys.modules, "diffusers", None)
    message = error_of(node, model)
    assert "needs diffusers and transformers" in message and "pip install" in message and "[local]" in message


def test_bad_field_values_are_refused_before_loading(node, tiny_model):
    with pytest.raises(ValueError) as info:
        run(node, tiny_model, strength=1.5, num_inference_steps=0)
    assert "strength" in str(info.value) and "num_inference_steps" in str(info.value)
    assert node.cache.loads == 0


def test_a_load_failure_inside_diffusers_is_reported_plainly(tiny_model, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for part in tiny_model.iterdir():
        target = broken / part.name
        target.symlink_to(part, target_is_directory=part.is_dir())
    (broken / "transformer").unlink()
    (broken / "transformer").mkdir()
    (broken / "transformer" / "config.json").write_bytes((tiny_model / "transformer" / "config.json").read_bytes())
    source = local_models.resolve(CUSTOM_PATH, str(broken))
    with pytest.raises(LocalModelError) as info:
        load(source, LoadOptions(device="cpu"))
    assert f"model: {str(broken)!r} could not be loaded as SD3" in str(info.value)


# --- single-file checkpoints: what they need beside their weights -------------------------

def test_single_file_checkpoint_gives_the_pixels_of_the_diffusers_folder(node, tiny_model, tiny_checkpoints):
    # The tiny folder doubles as the config folder: it has the configs and tokenizers of the
    # checkpoint's architecture (its weights are not read).
    from_folder, _ = run(node, tiny_model)
    from_file, _ = run(DiffusersSD3Img2Img(), tiny_checkpoints[0], config_path=str(tiny_model))
    assert torch.allclose(from_folder, from_file, atol=1e-4)


def test_single_file_checkpoint_without_t5_runs_with_t5_auto(tiny_model, tiny_checkpoints):
    node = DiffusersSD3Img2Img()
    images, _ = run(node, tiny_checkpoints[1], config_path=str(tiny_model))
    assert images.shape == (1, 64, 96, 3)
    assert node.cache._pipe.text_encoder_3 is None


def test_single_file_outside_comfyui_asks_for_a_config_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(single_file, "comfy_tokenizers", lambda: None)
    source = local_models.inspect(write_checkpoint(tmp_path / "sd3.safetensors", SD3_KEYS), "model_path")
    with pytest.raises(LocalModelError) as info:
        single_file.resolve(source, use_t5=False)
    assert "set config_path" in str(info.value)


def test_single_file_config_folder_lists_every_missing_file(tmp_path):
    source = local_models.inspect(write_checkpoint(tmp_path / "sd3.safetensors", SD3_KEYS), "model_path")
    config = tmp_path / "config"
    (config / "tokenizer").mkdir(parents=True)
    (config / "tokenizer" / "vocab.json").write_text("{}")
    with pytest.raises(LocalModelError) as info:
        single_file.resolve(source, use_t5=True, config_path=str(config))
    message = str(info.value)
    for name in ("model_index.json", "transformer/config.json", "tokenizer/merges.txt", "tokenizer_3/tokenizer.json"):
        assert str(config / name) in message
    assert "tokenizer/vocab.json" not in message


def test_single_file_uses_comfyuis_tokenizers_and_shipped_configs(tmp_path, monkeypatch):
    clip, t5 = tmp_path / "sd1_tokenizer", tmp_path / "t5_tokenizer"
    for folder, names in ((clip, single_file.CLIP_TOKENIZER), (t5, (single_file.T5_TOKENIZER,))):
        folder.mkdir()
        for name in names:
            (folder / name).write_text("{}")
    monkeypatch.setattr(single_file, "comfy_tokenizers", lambda: (clip, t5))
    source = local_models.inspect(write_checkpoint(tmp_path / "sd3.safetensors", SD3_KEYS), "model_path")
    config = single_file.resolve(source, use_t5=True)
    assert config.folder == single_file.SHIPPED
    assert config.tokenizers == single_file.Tokenizers(clip, t5)


def test_sd35_checkpoint_needs_its_own_configs(tmp_path):
    keys = SD3_KEYS + [local_models._DUAL_ATTENTION]
    source = local_models.inspect(write_checkpoint(tmp_path / "sd3.5_medium.safetensors", keys), "model_path")
    with pytest.raises(LocalModelError) as info:
        single_file.resolve(source, use_t5=False)
    assert "not SD3 medium" in str(info.value)


def test_shipped_configs_describe_sd3_medium():
    """Built on the meta device (no memory), the shipped configs give SD3 medium's published sizes."""
    pytest.importorskip("diffusers")
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    folder = single_file.SHIPPED

    def billions(model):
        return sum(p.numel() for p in model.parameters()) / 1e9

    with torch.device("meta"):
        transformer = SD3Transformer2DModel.from_config(SD3Transformer2DModel.load_config(folder / "transformer"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        clip_l = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2"))
        t5 = T5EncoderModel(T5Config.from_pretrained(folder / "text_encoder_3"))
    assert billions(transformer) == pytest.approx(2.03, abs=0.01)
    assert billions(vae) == pytest.approx(0.084, abs=0.001)
    assert billions(clip_l) == pytest.approx(0.124, abs=0.001)
    assert billions(clip_g) == pytest.approx(0.695, abs=0.001)
    assert billions(t5) == pytest.approx(4.76, abs=0.01)


# --- dtype auto: the fastest dtype SD3 runs correctly in on this machine -------------------

@pytest.mark.parametrize("feature, expected", [("avx512_bf16", torch.bfloat16), ("amx_bf16", torch.bfloat16),
                                               (None, torch.float32)])
def test_dtype_auto_on_the_cpu_is_bf16_only_with_hardware_bf16(tmp_path, monkeypatch, feature, expected):
    monkeypatch.setattr(local_pipeline, "cpu_bf16", lambda: feature)
    source = local_models.ModelSource(tmp_path, local_models.FOLDER, has_t5=False)
    placement = place(source, LoadOptions(device="cpu"))
    assert (placement.device.type, placement.dtype, placement.use_t5) == ("cpu", expected, False)
    assert (feature or "no hardware bf16") in placement.describe()


def test_dtype_auto_on_a_gpu_is_fp16_and_bf16_when_asked():
    assert local_pipeline.pick_dtype("auto", torch.device("cuda")) == torch.float16
    assert local_pipeline.pick_dtype("auto", torch.device("mps")) == torch.float16
    assert local_pipeline.pick_dtype("bf16", torch.device("cpu")) == torch.bfloat16


def test_hardware_bf16_is_read_from_the_cpu_flags_without_torch_probes(monkeypatch):
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.delattr(torch.cpu, probe, raising=False)
    monkeypatch.setattr(local_pipeline, "_cpu_flags", lambda: {"sse2", "avx2", "avx512_bf16"})
    assert local_pipeline.cpu_bf16() == "avx512_bf16"
    monkeypatch.setattr(local_pipeline, "_cpu_flags", lambda: {"sse2", "avx2"})
    assert local_pipeline.cpu_bf16() is None


def test_dtype_tooltip_says_what_auto_chose_here_and_why(monkeypatch):
    monkeypatch.setattr(local_pipeline, "cpu_bf16", lambda: "avx512_bf16")
    tooltip = DiffusersSD3Img2Img.INPUT_TYPES()["optional"]["dtype"][1]["tooltip"]
    assert "Here: bf16 on cpu" in tooltip and "avx512_bf16" in tooltip
    monkeypatch.setattr(local_pipeline, "cpu_bf16", lambda: None)
    assert "Here: fp32 on cpu" in DiffusersSD3Img2Img.INPUT_TYPES()["optional"]["dtype"][1]["tooltip"]


def test_dtype_auto_runs_every_component_in_bf16_and_logs_the_choice_once(node, tiny_model, monkeypatch, caplog):
    monkeypatch.setattr(local_pipeline, "cpu_bf16", lambda: "avx512_bf16")
    with caplog.at_level("INFO", logger="fal_sd3"):
        images, _ = run(node, tiny_model, device="cpu")
        run(node, tiny_model, device="cpu", seed=8)
    pipe = node.cache._pipe
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        assert getattr(pipe, name).dtype == torch.bfloat16, name
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
    chosen = [r.getMessage() for r in caplog.records if "runs in bf16 on cpu" in r.getMessage()]
    assert len(chosen) == 1 and "dtype auto: this CPU computes bf16 in hardware (avx512_bf16)" in chosen[0]


# --- the context: ComfyUI's, without rows of padding ----------------------------------------

def context_rows(node, tiny_model, **overrides):
    run(node, tiny_model, dtype="fp32", **overrides)
    (key,) = node.cache.prompts._entries
    return node.cache.prompts._entries[key]["prompt_embeds"].shape[1]


def test_without_t5_the_context_is_the_77_clip_rows(node, tiny_model):
    assert context_rows(node, tiny_model, t5="off") == 77


def test_with_t5_a_short_prompt_gets_77_t5_rows_and_a_long_one_all_it_needs(node, tiny_model):
    assert context_rows(node, tiny_model) == 77 + 77
    long_prompt = " ".join(["the red cat and the blue dog"] * 20)
    tokens = len(node.cache._pipe.tokenizer_3(long_prompt).input_ids)
    assert tokens > 77
    assert context_rows(DiffusersSD3Img2Img(), tiny_model, prompt=long_prompt) == 77 + tokens


def clip_only_reference(pipe, prompt, negative, image, seed, steps, strength, guidance):
    """SD3 without T5 as ComfyUI conditions it (comfy/text_encoders/sd3_clip.py), computed here from
    the text encoders: each CLIP's penultimate hidden states side by side, zero-padded to the
    transformer's width, no T5 rows; pooled = CLIP-L's state at its end token (unprojected) and
    CLIP-G's projected one."""
    def clip(text):
        rows, pooled = [], []
        for tokenizer, encoder, projected in ((pipe.tokenizer, pipe.text_encoder, False),
                                              (pipe.tokenizer_2, pipe.text_encoder_2, True)):
            ids = tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
            out = encoder(ids, output_hidden_states=True)
            rows.append(out.hidden_states[-2])
            end = int((ids[0] == encoder.config.eos_token_id).nonzero()[0])
            pooled.append(out.text_embeds if projected else out.last_hidden_state[:, end])
        context = torch.cat(rows, dim=-1)
        width = pipe.transformer.config.joint_attention_dim
        return torch.nn.functional.pad(context, (0, width - context.shape[-1])), torch.cat(pooled, dim=-1)

    with torch.inference_mode():
        context, pooled = clip(prompt)
        negative_context, negative_pooled = clip(negative)
        out = pipe(image=image.permute(0, 3, 1, 2), height=image.shape[1], width=image.shape[2], strength=strength,
                   num_inference_steps=steps, guidance_scale=guidance,
                   generator=torch.Generator("cpu").manual_seed(seed),
                   prompt_embeds=context, pooled_prompt_embeds=pooled, negative_prompt_embeds=negative_context,
                   negative_pooled_prompt_embeds=negative_pooled, output_type="pt").images
    return out.permute(0, 2, 3, 1)


def test_clip_only_path_matches_comfyuis_conditioning_not_diffusers_padding(node, tiny_model):
    image = picture()
    ours, _ = run(node, tiny_model, image=image, t5="off", dtype="fp32", negative_prompt="blurry")
    pipe = node.cache._pipe
    reference = clip_only_reference(pipe, PROMPT, "blurry", image, seed=7, steps=4, strength=0.75, guidance=5.0)
    assert torch.allclose(ours, reference.clamp(0, 1), atol=1e-5)
    with torch.inference_mode():  # diffusers' default: 256 zero rows of "T5" after the CLIP rows
        padded = pipe(prompt=PROMPT, negative_prompt="blurry", image=image.permute(0, 3, 1, 2), height=64, width=96,
                      strength=0.75, num_inference_steps=4, guidance_scale=5.0,
                      generator=torch.Generator("cpu").manual_seed(7), output_type="pt").images.permute(0, 2, 3, 1)
    assert (padded - ours).abs().max() > 1e-3


# --- work done once: the prompt's embeddings -------------------------------------------------

class EncoderCounter:
    def __init__(self, pipe):
        self.calls = 0
        self._hook = pipe.text_encoder.register_forward_hook(self._count)

    def _count(self, *_):
        self.calls += 1

    def remove(self):
        self._hook.remove()


def test_the_same_prompt_is_encoded_once_across_runs(node, tiny_model):
    first, _ = run(node, tiny_model, seed=30)
    counter = EncoderCounter(node.cache._pipe)
    try:
        again, _ = run(node, tiny_model, seed=30, strength=0.75)
        other_seed, _ = run(node, tiny_model, seed=31, num_images=2)
        assert counter.calls == 0
        run(node, tiny_model, seed=30, prompt="a blue dog")
        assert counter.calls == 2  # the prompt and the negative prompt, each once
    finally:
        counter.remove()
    assert torch.equal(first, again)
    assert other_seed.shape[0] == 2
    fresh, _ = run(DiffusersSD3Img2Img(), tiny_model, seed=31, num_images=2)
    assert torch.equal(other_seed, fresh)


def test_embeddings_are_dropped_with_the_pipeline(node, tiny_model):
    run(node, tiny_model)
    assert node.cache.prompts.encodes == 1
    run(node, tiny_model, t5="off")
    assert node.cache.prompts.encodes == 1 and node.cache.loads == 2
    node.cache.release()
    assert node.cache.prompts.encodes == 0 and node.cache._pipe is None


def test_the_picture_is_encoded_in_the_vaes_dtype_on_its_device(node, tiny_model, monkeypatch):
    monkeypatch.setattr(local_pipeline, "cpu_bf16", lambda: "avx512_bf16")
    run(node, tiny_model, device="cpu", num_inference_steps=1)
    pipe, seen = node.cache._pipe, []
    hook = pipe.vae.encoder.register_forward_pre_hook(lambda module, args: seen.append((args[0].dtype, args[0].device)))
    try:
        run(node, tiny_model, device="cpu")
    finally:
        hook.remove()
    assert seen == [(pipe.vae.dtype, pipe.vae.device)] and pipe.vae.dtype == torch.bfloat16
