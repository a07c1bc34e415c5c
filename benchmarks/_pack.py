"""Loads the repository root as the package ``comfyui_fal_sd3``, the way ComfyUI and the tests
do, so a benchmark measures the same code (the folder itself never goes on sys.path)."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACK = "comfyui_fal_sd3"
SHARED_IMAGES = ROOT.parent / "shared" / "data" / "images"


def load_pack():
    if PACK not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK] = module
        spec.loader.exec_module(module)
    return sys.modules[PACK]
