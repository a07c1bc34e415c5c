"""A BOOLEAN sent as text through ``POST /prompt`` is read as the pack's nodes mean it.

Before validating a prompt ComfyUI coerces each widget value with ``bool()``, so the string
``"false"`` (which scripts and hand-edited API workflows send) silently becomes True: a
``sync_mode: "false"`` reached fal as ``true``. An on-prompt handler sees the raw prompt first:
it turns ``"true"``/``"false"`` (and ``1``/``0``, ``yes``/``no``, ``on``/``off``, any case) into
booleans for the pack's nodes, and makes anything else fail ComfyUI's own coercion, so the prompt
is refused with a 400 naming the input instead of running with a guess.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from . import comfy

TRUE = frozenset({"true", "1", "yes", "on"})
FALSE = frozenset({"false", "0", "no", "off"})


class NotABoolean(str):
    """Text that is no boolean. It stays text for ComfyUI's error answer, but ``bool()`` of it
    raises, which ComfyUI reports as ``invalid_input_type`` for that input (HTTP 400)."""

    def __bool__(self) -> bool:
        raise ValueError(f"{str(self)!r} is not a boolean: send true or false (JSON booleans, or the text "
                         "'true' / 'false')")


def read_boolean(value: str) -> bool | NotABoolean:
    text = value.strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    return NotABoolean(value)


@functools.cache
def boolean_inputs(node_class: type) -> frozenset[str]:
    """The names of a node's BOOLEAN inputs (they do not change while ComfyUI runs)."""
    declared = node_class.INPUT_TYPES()
    return frozenset(name for group in ("required", "optional") for name, spec in declared.get(group, {}).items()
                     if isinstance(spec, tuple) and spec and spec[0] == "BOOLEAN")


def read_booleans(json_data: Any, classes: Mapping[str, type]) -> Any:
    """The ``/prompt`` body with the BOOLEAN inputs of nodes in ``classes`` read from text."""
    prompt = json_data.get("prompt") if isinstance(json_data, dict) else None
    if not isinstance(prompt, dict):
        return json_data
    for node in prompt.values():
        if not isinstance(node, dict) or not isinstance(node.get("inputs"), dict):
            continue
        node_class = classes.get(node.get("class_type"))
        if node_class is None:
            continue
        inputs = node["inputs"]
        for name in boolean_inputs(node_class):
            if isinstance(inputs.get(name), str) and not isinstance(inputs[name], NotABoolean):
                inputs[name] = read_boolean(inputs[name])
    return json_data


def register() -> None:
    """Install the handler on ComfyUI's server; a no-op outside ComfyUI."""
    from . import NODE_CLASS_MAPPINGS

    server = comfy.server_instance()
    if server is not None and hasattr(server, "add_on_prompt_handler"):
        server.add_on_prompt_handler(lambda json_data: read_booleans(json_data, NODE_CLASS_MAPPINGS))
