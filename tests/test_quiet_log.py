"""ComfyUI shows INFO logs: fal's calls must not add httpx's "HTTP Request:" line each."""

import asyncio
import logging

import httpx
import numpy as np
import torch

from comfyui_fal_sd3.nodes.fal_img2img import FalSD3Img2Img

DEFAULTS = dict(prompt="a quiet harbour", negative_prompt="", prompt_expansion=False, num_inference_steps=28,
                seed=3, guidance_scale=5.0, num_images=2, enable_safety_checker=True, strength=0.9, sync_mode=False)


def test_a_run_logs_no_httpx_request_lines_and_other_httpx_users_keep_theirs(fal_env, caplog):
    caplog.set_level(logging.INFO)
    picture = torch.from_numpy(np.zeros((2, 64, 64, 3), np.float32))
    asyncio.run(FalSD3Img2Img().run(**DEFAULTS, image=picture))
    assert fal_env.count("submit") == 2 and fal_env.count("file") == 4
    assert [r for r in caplog.records if r.name.startswith("httpx")] == []
    httpx.get(fal_env.base_url + "/cdn/files/none")  # someone else's httpx client, in the same process
    assert any(r.name == "httpx" and "HTTP Request:" in r.getMessage() for r in caplog.records)
