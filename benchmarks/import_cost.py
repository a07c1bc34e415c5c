"""What loading the pack costs ComfyUI at start-up, on top of `import torch` (which ComfyUI has
already paid), in fresh interpreters. Target: <= 50 ms.
Run: python benchmarks/import_cost.py [runs]
"""

import statistics
import subprocess
import sys

from _pack import ROOT

PROBE = f"""
import importlib.util, sys, time
import torch, numpy, PIL.Image, aiohttp  # already loaded in any ComfyUI process
start = time.perf_counter()
spec = importlib.util.spec_from_file_location("comfyui_fal_sd3", {str(ROOT / '__init__.py')!r},
                                              submodule_search_locations=[{str(ROOT)!r}])
module = importlib.util.module_from_spec(spec)
sys.modules["comfyui_fal_sd3"] = module
spec.loader.exec_module(module)
elapsed = time.perf_counter() - start
heavy = sorted(m for m in ("diffusers", "transformers", "httpx") if m in sys.modules)
print(elapsed, ",".join(heavy))
"""


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    times, heavy = [], ""
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout.split()
        times.append(float(out[0]) * 1000)
        heavy = out[1] if len(out) > 1 else ""
    print(f"pack import on top of torch: median {statistics.median(times):.1f} ms, "
          f"min {min(times):.1f} ms over {runs} fresh interpreters (target <= 50 ms)")
    print(f"heavy modules loaded by the import: {heavy or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
