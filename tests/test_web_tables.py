"""The front end's copies of Python tables stay equal to them (web/lib cannot import Python)."""

import re
from pathlib import Path

from comfyui_fal_sd3.fal_core import pricing
from comfyui_fal_sd3.fal_core.schema import ENDPOINT, IMAGE_SIZE_PRESETS
from comfyui_fal_sd3.nodes import size_preset

WEB_LIB = Path(__file__).resolve().parents[1] / "web" / "lib"


def js_object(file: str, name: str) -> str:
    """The text between the braces of ``name = {`` or ``name = Object.freeze({`` in ``file``."""
    text = (WEB_LIB / file).read_text(encoding="utf-8")
    match = re.search(rf"\b{name} = (?:Object\.freeze\()?\{{(.*?)\}}", text, re.S)
    assert match, f"{name} not found in web/lib/{file}"
    return match.group(1)


def js_string(file: str, name: str) -> str:
    match = re.search(rf'\b{name} = "([^"]*)";', (WEB_LIB / file).read_text(encoding="utf-8"))
    assert match, f"{name} not found in web/lib/{file}"
    return match.group(1)


def test_preset_sizes_match_the_schema():
    body = js_object("size_preset.js", "PRESET_SIZES")
    table = {name: (int(w), int(h)) for name, w, h in re.findall(r"(\w+): \[(\d+), (\d+)\]", body)}
    assert table == IMAGE_SIZE_PRESETS


def test_preset_choices_outside_the_table_match_the_node():
    assert js_string("size_preset.js", "MATCH_INPUT") == size_preset.MATCH_INPUT
    assert js_string("size_preset.js", "CUSTOM") == size_preset.CUSTOM


def test_published_price_is_the_servers():
    body = js_object("price.js", "PUBLISHED_PRICE")
    assert re.search(r'endpoint_id: "([^"]+)"', body).group(1) == ENDPOINT
    published = (float(re.search(r"unit_price: ([\d.]+)", body).group(1)),
                 re.search(r'unit: "([^"]+)"', body).group(1), re.search(r'currency: "([^"]+)"', body).group(1))
    assert published == pricing.PUBLISHED[ENDPOINT]


def test_per_image_units_match_the_server():
    text = (WEB_LIB / "price.js").read_text(encoding="utf-8")
    units = re.search(r"PER_IMAGE = \[([^\]]*)\]", text).group(1)
    assert tuple(re.findall(r'"([^"]+)"', units)) == pricing.PER_IMAGE_UNITS
