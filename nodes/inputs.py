"""ComfyUI input definitions built from fal_core's schema, so defaults and ranges live once."""

from __future__ import annotations

from typing import Any, Mapping

from ..fal_core.schema import FIELDS, Field

_TYPES = {bool: "BOOLEAN", int: "INT", float: "FLOAT", str: "STRING"}


def schema_input(name: str, fields: Mapping[str, Field] = FIELDS, **options: Any) -> tuple[str, dict[str, Any]]:
    """The ComfyUI input for field ``name`` (of ``fields``: SD3's by default); ``options`` add to or
    override its settings."""
    spec = fields[name]
    settings: dict[str, Any] = {"tooltip": spec.description}
    if spec.default is not None:
        settings["default"] = spec.default
    if spec.minimum is not None:
        settings.update(min=spec.minimum, max=spec.maximum, step=spec.step)
    if spec.multiline:
        settings["multiline"] = True
    settings.update(options)
    return (_TYPES[spec.type], settings)
