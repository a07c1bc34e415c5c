"""ComfyUI entry point of the fal SD3 img2img pack.

ComfyUI imports this file as a package at start-up: it stays cheap (no network, no diffusers,
no transformers) and never puts this folder on sys.path, where nodes/ would shadow ComfyUI's own
top-level ``nodes`` module.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .nodes.prompt_inputs import register as _register_prompt_inputs
from .nodes.routes import register as _register_routes

# The settings dialog's /fal/key route; ComfyUI's server exists by the time packs are imported.
_register_routes()
# BOOLEAN inputs sent as text through /prompt, read before ComfyUI's bool() flips "false".
_register_prompt_inputs()

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
