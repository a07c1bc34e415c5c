"""Loads the repository root as a package, the way ComfyUI loads a custom node pack.

The pack's folder is never put on ``sys.path``: ComfyUI has a top-level module of its own
named ``nodes`` that the pack's ``nodes/`` would shadow. Tests import ``comfyui_fal_sd3.*``.
"""
import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACK = "comfyui_fal_sd3"


def _load_pack():
    if PACK in sys.modules:
        return sys.modules[PACK]
    spec = importlib.util.spec_from_file_location(
        PACK, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = module
    spec.loader.exec_module(module)
    return module


_load_pack()


import pytest  # noqa: E402

from comfyui_server import example_picture, running_comfyui  # noqa: E402
from fal_emulator import FalEmulator  # noqa: E402


@pytest.fixture(autouse=True)
def _no_real_platform_api(monkeypatch):
    """A client built without ``api_url`` would read fal's real Platform API: loopback instead."""
    monkeypatch.setenv("FAL_API_URL", "http://127.0.0.1:9/v1")


@pytest.fixture
def fal_emulator():
    """A fresh fal emulator on 127.0.0.1 for one test."""
    with FalEmulator() as emulator:
        yield emulator


@pytest.fixture
def fal_env(fal_emulator, monkeypatch, tmp_path):
    """The environment of a ComfyUI user pointed at the emulator, with a private state folder."""
    for name, value in fal_emulator.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FAL_SD3_STATE_DIR", str(tmp_path / "state"))
    return fal_emulator


@pytest.fixture(scope="module")
def comfyui(emulator, tmp_path_factory):
    """ComfyUI started with the pack linked into custom_nodes and fal pointed at the test module's
    own ``emulator`` fixture, with a private state folder."""
    base = tmp_path_factory.mktemp("comfyui")
    env = {**os.environ, **emulator.env(), "FAL_SD3_STATE_DIR": str(base / "state")}
    with running_comfyui(base, env) as url:
        yield {"url": url, "base": base, "picture": example_picture()}
