"""ComfyUI input definitions built from fal_core's schema, so defaults and ranges live once."""

from __future__ import annotations

from typing import Any

from ..fal_core.schema import FIELDS

_TYPES = {bool: "BOOLEAN", int: "INT", float: "FLOAT", str: "STRING"}


def schema_input(name: str, **options: Any) -> tuple[str, dict[str, Any]]:
    """The ComfyUI input for schema field ``name``; ``options`` add to or override its settings."""
    spec = FIELDS[name]
    settings: dict[str, Any] = {"tooltip": spec.description}
    if spec.default is not None:
        settings["default"] = spec.default
    if spec.minimum is not None:
        settings.update(min=spec.minimum, max=spec.maximum, step=spec.step)
    if spec.multiline:
        settings["multiline"] = True
    settings.update(options)
    return (_TYPES[spec.type], settings)
