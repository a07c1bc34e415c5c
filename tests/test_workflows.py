"""Every example workflow against the nodes' own definitions: a renamed input, a changed type or
an out-of-range widget value breaks the build here, not a user's saved workflow."""

import json
from pathlib import Path

import pytest

from comfyui_fal_sd3.nodes import NODE_CLASS_MAPPINGS, comfy

EXAMPLES = Path(__file__).resolve().parents[1] / "example_workflows"
UI_FILES = sorted(EXAMPLES.glob("*.json"))
API_FILES = sorted((EXAMPLES / "api").glob("*.json"))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
# Nodes of the editor alone: never sent to the server, so absent from the API copies.
EDITOR_ONLY = {"Note", "MarkdownNote"}


class _Core:
    """The ComfyUI core nodes the examples use, as ComfyUI defines them (nodes.py)."""

    class LoadImage:
        RETURN_TYPES = ("IMAGE", "MASK")

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"image": (["example.png"], {"image_upload": True})}}

    class SaveImage:
        RETURN_TYPES = ()

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})}}


@pytest.fixture(autouse=True)
def installed_models(tmp_path, monkeypatch):
    """The local node's model menu lists what is on disk: put the model the examples name there."""
    folder = tmp_path / "diffusers" / "stable-diffusion-3-medium-diffusers"
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    monkeypatch.setattr(comfy, "model_folders", lambda kind: [tmp_path / kind])


def node_class(type_name):
    cls = NODE_CLASS_MAPPINGS.get(type_name) or getattr(_Core, type_name, None)
    assert cls is not None, f"unknown node type {type_name!r}"
    return cls


def all_inputs(cls):
    spec = cls.INPUT_TYPES()
    return {**spec.get("required", {}), **spec.get("optional", {})}


def is_widget(definition):
    kind = definition[0]
    options = definition[1] if len(definition) > 1 else {}
    return isinstance(kind, list) or (kind in WIDGET_TYPES and not options.get("forceInput"))


def check_value(where, definition, value):
    kind = definition[0]
    options = definition[1] if len(definition) > 1 else {}
    if isinstance(kind, list):
        assert value in kind, f"{where}: {value!r} is not one of {kind}"
    elif kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: {value!r} is not an INT"
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {value!r} is not a FLOAT"
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), f"{where}: {value!r} is not a BOOLEAN"
    elif kind == "STRING":
        assert isinstance(value, str), f"{where}: {value!r} is not a STRING"
    if "min" in options:
        assert options["min"] <= value <= options["max"], \
            f"{where}: {value!r} outside {options['min']}..{options['max']}"


def widget_slots(cls):
    """The names behind a UI node's positional widgets_values, with ComfyUI's extra
    control_after_generate value after a seed."""
    slots = []
    for name, definition in all_inputs(cls).items():
        if is_widget(definition):
            slots.append(name)
            options = definition[1] if len(definition) > 1 else {}
            if definition[0] == "INT" and (name == "seed" or options.get("control_after_generate")):
                slots.append(None)
            if options.get("image_upload"):
                slots.append(None)
    return slots


def test_there_are_examples():
    assert len(UI_FILES) >= 2 and len(API_FILES) == len(UI_FILES)
    assert {p.name for p in UI_FILES} == {p.name for p in API_FILES}


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_workflow(path):
    data = json.loads(path.read_text())
    nodes = {n["id"]: n for n in data["nodes"]}
    assert data["last_node_id"] >= max(nodes) and data["last_link_id"] >= max(link[0] for link in data["links"])
    for node in nodes.values():
        if node["type"] in EDITOR_ONLY:
            assert not node.get("inputs") and not node.get("outputs")
            assert len(node["widgets_values"]) == 1 and isinstance(node["widgets_values"][0], str)
            continue
        cls = node_class(node["type"])
        inputs = all_inputs(cls)
        slots = widget_slots(cls)
        values = node.get("widgets_values", [])
        assert len(values) == len(slots), f"{path.name} node {node['id']} ({node['type']}): {len(values)} widget " \
                                          f"values for {len(slots)} widgets {slots}"
        for name, value in zip(slots, values, strict=True):
            if name is not None:
                check_value(f"{path.name} node {node['id']}.{name}", inputs[name], value)
            elif node["type"] != "LoadImage":
                assert value in ("fixed", "increment", "decrement", "randomize")
        for socket in node.get("inputs", []):
            assert socket["name"] in inputs, f"{node['type']} has no input {socket['name']!r}"
            assert socket["type"] == inputs[socket["name"]][0]
        assert [o["type"] for o in node.get("outputs", [])] == list(cls.RETURN_TYPES)
        required = cls.INPUT_TYPES().get("required", {})
        linked = {s["name"] for s in node.get("inputs", []) if s.get("link") is not None}
        for name, definition in required.items():
            assert is_widget(definition) or name in linked, f"{node['type']}: required input {name!r} is not linked"
    for link_id, src, src_slot, dst, dst_slot, kind in data["links"]:
        out_type = node_class(nodes[src]["type"]).RETURN_TYPES[src_slot]
        socket = nodes[dst]["inputs"][dst_slot]
        assert out_type == kind == socket["type"], f"{path.name} link {link_id}: {out_type} -> {socket['type']}"
        assert socket["link"] == link_id and link_id in nodes[src]["outputs"][src_slot]["links"]


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.name)
def test_api_workflow(path):
    prompt = json.loads(path.read_text())
    for node_id, node in prompt.items():
        cls = node_class(node["class_type"])
        inputs = all_inputs(cls)
        for name in cls.INPUT_TYPES().get("required", {}):
            assert name in node["inputs"], f"{path.name} node {node_id}: missing required input {name!r}"
        for name, value in node["inputs"].items():
            assert name in inputs, f"{path.name} node {node_id} ({node['class_type']}) has no input {name!r}"
            if isinstance(value, list):
                src = prompt[value[0]]
                out_type = node_class(src["class_type"]).RETURN_TYPES[value[1]]
                assert out_type == inputs[name][0], f"{path.name} node {node_id}.{name}: {out_type} link"
            else:
                check_value(f"{path.name} node {node_id}.{name}", inputs[name], value)
    assert any(node["class_type"] == "SaveImage" for node in prompt.values()), "no output node: /prompt refuses it"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_and_api_copies_agree(path):
    ui = json.loads(path.read_text())
    api = json.loads((EXAMPLES / "api" / path.name).read_text())
    server_nodes = [n for n in ui["nodes"] if n["type"] not in EDITOR_ONLY]
    assert sorted(n["type"] for n in server_nodes) == sorted(n["class_type"] for n in api.values())
    for node in server_nodes:
        twin = next(n for n in api.values() if n["class_type"] == node["type"])
        names = widget_slots(node_class(node["type"]))
        widgets = {name: value for name, value in zip(names, node["widgets_values"], strict=False) if name is not None}
        for name, value in widgets.items():
            if name in twin["inputs"] and not isinstance(twin["inputs"][name], list):
                assert twin["inputs"][name] == value, f"{path.name} {node['type']}.{name}"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_template_is_ready_to_use(path):
    """What the template browser shows (a thumbnail, the title) and a note on what to do first."""
    from PIL import Image

    with Image.open(path.with_suffix(".jpg")) as thumbnail:
        assert thumbnail.format == "JPEG" and min(thumbnail.size) >= 256
    data = json.loads(path.read_text())
    notes = [n["widgets_values"][0] for n in data["nodes"] if n["type"] == "Note"]
    assert len(notes) == 1
    local = any(n["type"] == "DiffusersSD3Img2Img" for n in data["nodes"])
    if local:
        assert "models/diffusers/" in notes[0] and "models/checkpoints/" in notes[0]
        assert "fal" not in data["extra"]["title"]
    else:
        assert "Settings" in notes[0] and "fal API key" in notes[0] and "FAL_KEY" in notes[0]
        assert "fal" in data["extra"]["title"]
