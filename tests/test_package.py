"""The pack loads the way ComfyUI loads it, once, and its import stays cheap."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("some_pack_name", {str(ROOT / '__init__.py')!r},
                                              submodule_search_locations=[{str(ROOT)!r}])
module = importlib.util.module_from_spec(spec)
sys.modules["some_pack_name"] = module
spec.loader.exec_module(module)
print(sorted(module.NODE_CLASS_MAPPINGS), module.WEB_DIRECTORY)
print(sorted(m for m in ("httpx", "aiohttp", "diffusers", "transformers", "nodes", "fal_core") if m in sys.modules))
"""


def test_loaded_as_a_package_not_under_the_folder_name():
    assert "comfyui_fal_sd3" in sys.modules
    assert Path(sys.modules["comfyui_fal_sd3"].__file__).parent == ROOT
    assert ROOT.name not in sys.modules  # pytest did not import the root a second time


def test_import_registers_nodes_and_loads_nothing_heavy():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    mappings, heavy = out.strip().splitlines()
    for node_id in ("FalSD3ImageSize", "FalUploadImage", "FalSD3Img2Img"):
        assert node_id in mappings
    assert "./web" in mappings
    # No top-level "nodes" or "fal_core" either: everything stays inside the pack's package.
    assert heavy == "[]"


def test_public_names_are_listed_alike_for_tools_and_resolve():
    import ast

    import comfyui_fal_sd3.fal_core as fal_core

    tree = ast.parse((ROOT / "fal_core" / "__init__.py").read_text())
    typed = {alias.name: node.module for block in tree.body if isinstance(block, ast.If)
             for node in block.body if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert typed == fal_core._MODULE_OF
    assert sorted(fal_core.__all__) == sorted(["__version__", *fal_core._MODULE_OF])
    for name in fal_core.__all__:
        assert getattr(fal_core, name) is not None
