"""Hostile answers, hostile pages and bad input: the key never leaks, memory stays bounded,
nothing is fetched or sent that should not be."""

import asyncio
import json
import logging
from urllib.parse import quote

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_fal_sd3.fal_core import redaction
from comfyui_fal_sd3.fal_core.config import Secret
from comfyui_fal_sd3.fal_core.errors import (
    AppError, AuthError, FalError, HTTPStatusError, InputError, ResponseError, TransportError,
)
from comfyui_fal_sd3.fal_core.schema import ImageSize
from comfyui_fal_sd3.nodes.fal_img2img import FalSD3Img2Img
from fal_emulator import FalEmulator, expected_output
from test_cli import cli
from test_fal_nodes import DEFAULTS, _fake_comfyui, as_uint8, batch, picture

KEY_ID = "8f1c2e3d-4b5a-6978-8a9b-0c1d2e3f4a5b"
KEY_SECRET = "0123456789abcdef0123456789abcdef"
KEY = f"{KEY_ID}:{KEY_SECRET}"


def forms(key: str) -> list[str]:
    """The ways a key can show up in an answer: each half, URL-encoded, JSON-escaped."""
    escaped = "".join(f"\\u{ord(c):04x}" for c in key)
    return [*key.split(":"), quote(key, safe=""), escaped, escaped.upper().replace("\\U", "\\u")]


def leaked(text: str, key: str = KEY) -> list[str]:
    return [form for form in forms(key) if form.lower() in text.lower()]


def test_redact_covers_literal_escaped_encoded_and_halves():
    Secret(KEY)
    escaped = "".join(f"\\u{ord(c):04x}" for c in KEY)
    mixed = KEY_ID + "%3a" + KEY_SECRET[:10] + "".join(f"\\u{ord(c):04X}" for c in KEY_SECRET[10:])
    text = f"a {KEY} b {quote(KEY, safe='')} c {escaped} d {mixed} e {KEY_SECRET} f {KEY_ID}"
    assert redaction.redact(text) == "a *** b *** c *** d *** e *** f ***"
    assert redaction.redact_value({"x": [f"Key {KEY}", 3, {"y": KEY_SECRET}]}) == {"x": ["Key ***", 3, {"y": "***"}]}
    # An excerpt redacts before it cuts, so no half of the key survives the cut.
    assert redaction.excerpt("." * 190 + KEY, 200) == repr("." * 190 + "***")
    assert FalError(f"boom {KEY}").args == ("boom ***",)


def test_the_fal_loggers_never_print_the_key(caplog):
    Secret(KEY)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("fal_core").warning("answer: %s", {"echo": quote(KEY, safe="")})
        logging.getLogger("fal_sd3").info(f"answer {KEY}")
    assert not leaked(caplog.text) and "***" in caplog.text


def test_a_hostile_fal_echoing_the_key_in_every_answer_leaks_it_nowhere(fal_emulator, monkeypatch, tmp_path, caplog):
    fal_emulator.key = KEY
    fal_emulator.echo_key = True
    for name, value in fal_emulator.env().items():
        monkeypatch.setenv(name, value)
    state = tmp_path / "state"
    monkeypatch.setenv("FAL_SD3_STATE_DIR", str(state))
    shown = _fake_comfyui(monkeypatch)
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []

    pic = picture()
    images, _, _, response = asyncio.run(FalSD3Img2Img().run(**{**DEFAULTS, "image": batch(pic), "unique_id": "7"}))
    assert np.array_equal(as_uint8(images)[0], expected_output(pic, 0, None))
    seen.append(response)
    # sync_mode puts the pictures inside the answer; a failed app puts fal's error in the exception.
    asyncio.run(FalSD3Img2Img().run(**{**DEFAULTS, "image": batch(pic), "sync_mode": True, "seed": 2}))
    fal_emulator.next_job(fail="CUDA out of memory")
    with pytest.raises(AppError) as failure:
        asyncio.run(FalSD3Img2Img().run(**{**DEFAULTS, "image": batch(pic), "seed": 3, "unique_id": "7"}))
    seen += [str(failure.value), repr(failure.value.args), str(failure.value.error)]
    seen += shown["text"] + [json.dumps(shown["events"])]
    seen.append(caplog.text)
    journal = (state / "journal.jsonl").read_text()
    assert journal.count("\n") >= 5
    seen.append(journal)

    request_id = json.loads(response)[0]["request_id"]
    env = {**fal_emulator.env(), "FAL_JOURNAL": str(state / "journal.jsonl")}
    source = tmp_path / "in.png"

    Image.fromarray(pic).save(source)
    for args in (("status", request_id), ("result", request_id), ("journal",), ("journal", "--fetch", request_id),
                 ("img2img", str(source), "--prompt", "p", "--json", "-o", str(tmp_path / "out")),
                 ("cancel", request_id)):
        out = cli(*args, env=env)
        assert out.returncode == 0, out.stderr
        seen += [out.stdout, out.stderr]

    assert "(Authorization: Key ***)" in str(failure.value)  # the echo arrived, redacted
    for text in seen:
        assert not leaked(text), (leaked(text), text[:2000])


@pytest.mark.parametrize("env_key, file_text", [
    ({"FAL_KEY": f"{KEY_ID}:{KEY_SECRET[:16]}\x07{KEY_SECRET[16:]}"}, None),
    ({"FAL_KEY": f"{KEY_ID}:{KEY_SECRET[:16]}\r\nX-Injected: {KEY_SECRET[16:]}"}, None),
    ({"FAL_KEY_ID": KEY_ID, "FAL_KEY_SECRET": f"{KEY_SECRET[:16]}\t{KEY_SECRET[16:]}"}, None),
    ({}, f"{KEY}\n{KEY_SECRET[::-1]}\n"),
])
def test_a_key_with_control_characters_or_a_second_line_is_refused_unseen(fal_env, monkeypatch, tmp_path,
                                                                           env_key, file_text):
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env_key.items():
        monkeypatch.setenv(name, value)
    if file_text is not None:
        key_file = tmp_path / "state" / "fal_key"
        key_file.parent.mkdir(parents=True)
        key_file.write_text(file_text)
    with pytest.raises(FalError) as refused:
        asyncio.run(FalSD3Img2Img().run(**{**DEFAULTS, "image": batch(picture())}))
    message = str(refused.value)
    where = "key file" if file_text is not None else next(iter(env_key))
    assert where in message and "key_id:key_secret" in message
    for piece in (KEY_ID[:8], KEY_SECRET[:8], KEY_SECRET[16:24], KEY_SECRET[::-1][:8]):
        assert piece not in message
    assert fal_env.calls() == []  # refused before anything was sent

    source = tmp_path / "in.png"
    Image.fromarray(picture()).save(source)
    env = {**{k: v for k, v in fal_env.env().items() if k != "FAL_KEY"}, **env_key,
           "FAL_JOURNAL": str(tmp_path / "journal.jsonl")}
    if file_text is None:
        out = cli("img2img", str(source), "--prompt", "p", env=env)
        assert out.returncode == 2 and where in out.stderr
        assert not any(piece in out.stderr + out.stdout for piece in (KEY_SECRET[:8], KEY_SECRET[16:24]))


def test_a_key_given_as_an_argument_gets_the_same_check():
    from comfyui_fal_sd3.fal_core.config import FalConfig
    from comfyui_fal_sd3.fal_core.errors import ConfigError
    for bad in (f"{KEY}\nX-Injected: 1", f"{KEY_ID}:{KEY_SECRET}\x00", Secret(f"{KEY_ID} {KEY_SECRET}")):
        with pytest.raises(ConfigError, match="the key given is not usable") as refused:
            FalConfig(key=bad)
        assert KEY_SECRET[:8] not in str(refused.value)


@pytest.fixture
def internal_service():
    """Another server on the machine (a metadata service, a router's page) that fal's answers
    point at; its calls are recorded like the emulator's."""
    with FalEmulator(key="internal-id:internal-secret") as other:
        yield other


def test_urls_in_a_submit_answer_that_leave_the_queue_host_are_not_followed(fal_env, internal_service):
    base = f"{internal_service.queue_url}/fal-ai/x/requests/stolen"
    fal_env.fault("submit", patch={"status_url": base + "/status", "response_url": base,
                                   "cancel_url": base + "/cancel"})
    pic = picture()
    images, *_ = asyncio.run(FalSD3Img2Img().run(**{**DEFAULTS, "image": batch(pic)}))
    assert np.array_equal(as_uint8(images)[0], expected_output(pic, 0, None))
    assert internal_service.calls() == []  # rebuilt from the request id, on the queue host
    assert fal_env.count("result") == 1


@pytest.mark.parametrize("request_id", ["../../../etc/passwd", "abc/def", "a b", "", 42, "x" * 500])
def test_a_request_id_that_is_not_an_id_is_never_used(fal_env, request_id):
    # fal answered 2xx, so it took the job (and charges for it): the request is followed under
    # the id of the x-fal-request-id header, never under the one in the body.
    fal_env.fault("submit", patch={"request_id": request_id})
    pic = picture()
    images, *_ = asyncio.run(FalSD3Img2Img().run(**{**DEFAULTS, "image": batch(pic)}))
    assert np.array_equal(as_uint8(images)[0], expected_output(pic, 0, None))
    (job_id,) = fal_env.jobs
    later = [c.path for c in fal_env.calls() if c.kind in ("stream", "status", "result", "cancel")]
    assert later and all(f"/requests/{job_id}" in path for path in later)


def test_the_command_line_refuses_a_request_id_that_is_not_an_id(fal_emulator, tmp_path):
    env = {**fal_emulator.env(), "FAL_JOURNAL": str(tmp_path / "journal.jsonl")}
    out = cli("status", "../../x", env=env)
    assert out.returncode == 2 and "request_id" in out.stderr and fal_emulator.calls() == []


@pytest.mark.parametrize("status", [404, 401, 403])
def test_a_foreign_hosts_answer_is_never_quoted_nor_taken_for_a_key_problem(fal_env, internal_service, status):
    page = "root:x:0:0:root:/root:/bin/bash (internal admin page)"
    internal_service.fault("file", status=status, body=page)
    url = f"{internal_service.cdn_url}/files/ab/result.png"
    fal_env.fault("result", patch={"images": [{"url": url, "width": 48, "height": 40}]})
    with pytest.raises(HTTPStatusError) as failure:
        asyncio.run(FalSD3Img2Img().run(**{**DEFAULTS, "image": batch(picture())}))
    message = str(failure.value)
    assert not isinstance(failure.value, AuthError) and "key" not in message.lower()
    assert "internal admin page" not in message and "root:x" not in message
    assert f"HTTP {status}" in message and url in message and "not one of fal's hosts" in message


@pytest.mark.parametrize("url, problem", [
    ("http://127.0.0.1:99999/x.png", "port 99999 is out of range"),
    ("http://[::1/x.png", "malformed"),
    ("ftp://127.0.0.1/x.png", "only http:// and https://"),
    ("http://exa mple/x.png", "is not a host name"),
])
def test_a_malformed_result_url_is_a_transport_error_naming_it(fal_env, url, problem):
    fal_env.fault("result", patch={"images": [{"url": url}]})
    with pytest.raises(TransportError) as failure:
        asyncio.run(FalSD3Img2Img().run(**{**DEFAULTS, "image": batch(picture())}))
    assert problem in str(failure.value) and url in str(failure.value)


def _peak_memory(run):
    """What ``run()`` returns or raises, and the peak of Python memory it took (bytes)."""
    import tracemalloc
    tracemalloc.start()
    try:
        try:
            outcome = run()
        except Exception as exc:
            outcome = exc
        return outcome, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_an_endless_status_stream_line_is_dropped_and_the_result_still_arrives(fal_env, caplog):
    fal_env.fault("stream", endless=True)  # 1 GiB without a newline
    pic = picture()
    outcome, peak = _peak_memory(lambda: asyncio.run(FalSD3Img2Img().run(**{**DEFAULTS, "image": batch(pic)})))
    assert not isinstance(outcome, Exception), outcome
    assert np.array_equal(as_uint8(outcome[0])[0], expected_output(pic, 0, None))
    assert "line of over 1,048,576 bytes" in caplog.text and fal_env.count("status") >= 1
    assert peak < 32 * 1024 * 1024


@pytest.mark.parametrize("fault", [dict(pad=20 * 1024 * 1024), dict(endless=True)])
def test_a_giant_or_endless_answer_is_refused_with_a_clear_error(fal_env, tmp_path, fault):
    fal_env.fault("result", **fault)
    failure, peak = _peak_memory(lambda: asyncio.run(FalSD3Img2Img().run(**{**DEFAULTS, "image": batch(picture())})))
    assert isinstance(failure, ResponseError), failure
    assert "over the limit of 16,777,216 bytes" in str(failure) and "sync_mode" in str(failure)
    if fault.get("endless"):  # (the padded answer is built in this process, by the emulator)
        assert peak < 48 * 1024 * 1024
    journal = tmp_path / "state" / "journal.jsonl"
    assert journal.stat().st_size < 64 * 1024  # nothing of it was copied into the journal


def test_more_result_images_than_asked_are_refused_before_any_download(fal_env):
    fal_env.fault("result", patch={"images": [{"url": f"{fal_env.cdn_url}/files/x/{i}.png"} for i in range(50)]})
    with pytest.raises(ResponseError, match="has 50 images, but 2 were asked for"):
        asyncio.run(FalSD3Img2Img().run(**{**DEFAULTS, "image": batch(picture()), "num_images": 2}))
    assert fal_env.count("file") == 0


def test_a_result_image_over_sd3s_size_is_refused_from_its_header(fal_env):
    import struct
    import zlib

    from comfyui_fal_sd3.fal_core.errors import FileError
    from comfyui_fal_sd3.fal_core.images import _PNG_SIGNATURE, _chunk
    # A few hundred bytes that claim 8000x8000 pixels (192 MB once decoded).
    bomb = _PNG_SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", 8000, 8000, 8, 2, 0, 0, 0)) + \
        _chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + _chunk(b"IEND", b"")
    url = fal_env._store("bomb.png", bomb, "image/png")
    fal_env.fault("result", patch={"images": [{"url": url}]})
    with pytest.raises(FileError, match=r"claims 8000x8000 pixels, over the limit of 9,437,184"):
        asyncio.run(FalSD3Img2Img().run(**{**DEFAULTS, "image": batch(picture())}))


def test_the_state_folder_is_created_private_and_result_files_too(fal_env, monkeypatch, tmp_path):
    import os
    import stat
    state = tmp_path / "fresh" / "state"  # neither exists: the first writer creates both
    monkeypatch.setenv("FAL_SD3_STATE_DIR", str(state))
    os.umask(0o022)
    asyncio.run(FalSD3Img2Img().run(**{**DEFAULTS, "image": batch(picture())}))
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(state) == 0o700 and mode(state.parent) == 0o700
    results = list((state / "results").iterdir())
    assert results and mode(state / "results") == 0o700 and {mode(p) for p in results} == {0o600}
    assert mode(state / "journal.jsonl") == 0o600


def test_a_request_id_never_becomes_a_path(fal_emulator, tmp_path):
    env = {**fal_emulator.env(), "FAL_JOURNAL": str(tmp_path / "journal.jsonl")}
    out = tmp_path / "out"
    for args in (("result", "../../escaped", "-o", str(out)), ("journal", "--fetch", "../../escaped", "-o", str(out))):
        answer = cli(*args, env=env)
        assert answer.returncode == 2 and "request_id" in answer.stderr
    assert not (tmp_path / "escaped-0.png").exists() and not list(tmp_path.parent.glob("escaped*"))
    from comfyui_fal_sd3.fal_core.cli import _file_stem
    assert _file_stem("fal-../../etc/passwd") == "fal-______etc_passwd"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "/etc/passwd", "javascript:alert(1)",
                                 "ftp://127.0.0.1/x.png", "data:text/html,<script>alert(1)</script>",
                                 "http:///etc/passwd", "https://exa mple/x.png"])
def test_image_url_takes_only_http_urls_and_image_data_uris(fal_env, url):
    with pytest.raises(InputError) as refused:
        asyncio.run(FalSD3Img2Img().run(**{**DEFAULTS, "image_url": url}))
    assert "image_url" in str(refused.value) and fal_env.calls() == []


@pytest.mark.parametrize("h, w", [(64, 3100), (40, 48), (3100, 64)])
def test_a_picture_sd3_cannot_keep_needs_an_image_size_before_anything_is_sent(fal_env, h, w):
    image = torch.zeros((1, h, w, 3))
    with pytest.raises(InputError) as refused:
        asyncio.run(FalSD3Img2Img().run(**{**DEFAULTS, "image": image}))
    message = str(refused.value)
    assert f"{w}x{h} pixels" in message and "image_size" in message and "SD3 Image Size" in message
    assert fal_env.calls() == []


def test_a_picture_of_any_size_goes_with_an_image_size(fal_env):
    pic = picture(64, 3100)
    images, *_ = asyncio.run(FalSD3Img2Img().run(**{**DEFAULTS, "image": batch(pic),
                                                    "image_size": ImageSize.parse("square")}))
    assert np.array_equal(as_uint8(images)[0], expected_output(pic, 0, (512, 512)))


@pytest.mark.parametrize("size", [42, ["square"], {"w": 5}, object()])
def test_an_image_size_of_the_wrong_type_is_a_clear_error(fal_env, size):
    with pytest.raises(InputError, match="image_size") as refused:
        asyncio.run(FalSD3Img2Img().run(**{**DEFAULTS, "image": batch(picture()), "image_size": size}))
    assert "use one of square_hd" in str(refused.value) and fal_env.calls() == []


@pytest.mark.parametrize("image, size, message", [
    (torch.zeros((1, 40, 48, 3)), None, "48x40 pixels"),
    (torch.zeros((1, 64, 3100, 3)), None, "3100x64 pixels"),
    (torch.zeros((1, 64, 64, 3)), 42, "image_size=42"),
    (torch.zeros((1, 64, 64, 3)), {"width": 9000, "height": 64}, "image_size.width=9000"),
])
def test_the_local_node_checks_the_same_before_diffusers(image, size, message):
    pytest.importorskip("diffusers")
    from comfyui_fal_sd3.nodes.local_img2img import DiffusersSD3Img2Img
    with pytest.raises(InputError) as refused:
        DiffusersSD3Img2Img().run(model="no such model", image=image, prompt="p", negative_prompt="",
                                  num_inference_steps=2, seed=0, guidance_scale=5.0, num_images=1, strength=0.5,
                                  image_size=size)
    assert message in str(refused.value)


def test_a_boolean_sent_as_text_through_prompt_is_read_or_refused_never_flipped():
    from comfyui_fal_sd3.nodes import NODE_CLASS_MAPPINGS
    from comfyui_fal_sd3.nodes.prompt_inputs import read_booleans
    body = {"prompt": {
        "1": {"class_type": "FalSD3Img2Img", "inputs": {
            "sync_mode": "false", "prompt_expansion": "TRUE", "enable_safety_checker": " 0 ",
            "force_new_request": "maybe", "prompt": "false", "seed": "3", "image": ["2", 0]}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "false"}},
        "3": "not a node",
    }}
    inputs = read_booleans(body, NODE_CLASS_MAPPINGS)["prompt"]["1"]["inputs"]
    assert (inputs["sync_mode"], inputs["prompt_expansion"], inputs["enable_safety_checker"]) == (False, True, False)
    assert inputs["prompt"] == "false" and inputs["seed"] == "3"  # a STRING and an INT are left to ComfyUI
    assert body["prompt"]["2"]["inputs"]["image"] == "false"  # other packs' nodes are not ours to read
    # What ComfyUI's validation does next: bool() of an unreadable value fails, so the prompt is
    # refused (400, invalid_input_type on force_new_request) instead of running as True.
    with pytest.raises(ValueError, match="'maybe' is not a boolean"):
        bool(inputs["force_new_request"])
    assert json.loads(json.dumps(inputs))["force_new_request"] == "maybe"  # ComfyUI's answer can show it


def test_an_oversized_submit_answer_is_an_uncertain_submit_never_paid_twice(fal_env, caplog):
    """fal took the job: it is looked up in fal's history like a lost answer, never sent again."""
    fal_env.fault("submit", pad=20 * 1024 * 1024)
    pic = picture()
    for _ in range(2):
        images, *_ = asyncio.run(FalSD3Img2Img().run(**{**DEFAULTS, "image": batch(pic)}))
        assert np.array_equal(as_uint8(images)[0], expected_output(pic, 0, None))
    assert fal_env.count("submit") == 1


def test_the_editor_routes_answers_never_hold_a_key_fal_echoed(fal_emulator, monkeypatch, tmp_path):
    """The key test and the price routes quote fal's answers (refusals included) to the page."""
    from test_editor_routes import call as route_call
    monkeypatch.setenv("FAL_SD3_STATE_DIR", str(tmp_path / "state"))
    fal_emulator.key = KEY
    fal_emulator.echo_key = True
    wrong = f"{KEY_ID}:{KEY_SECRET[::-1]}"  # a refused key, echoed back in the 401 too
    answers = route_call({**fal_emulator.env()}, ("POST", "/fal/key/test", {}, None),
                         ("POST", "/fal/key/test", {"key": wrong}, None), ("GET", "/fal/price", None, None),
                         pause=0.3)
    answers += route_call({**fal_emulator.env()}, ("GET", "/fal/price", None, None))
    assert answers[0][1]["ok"] is True and answers[1][1]["status"] == 401 and "***" in answers[1][1]["message"]
    text = json.dumps([body for _, body, _ in answers])
    assert not leaked(text) and not leaked(text, wrong)


def test_folders_are_made_in_one_place_and_the_command_line_prints_through_redaction():
    """Structure that keeps the guarantees when code is added: no other mkdir of the pack's own
    folders (the command line's output folder is the user's), no print that skips redaction."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    makers = {p.relative_to(root).as_posix() for folder in ("fal_core", "nodes") for p in (root / folder).glob("*.py")
              if ".mkdir(" in p.read_text()}
    assert makers <= {"fal_core/private_files.py", "fal_core/cli.py"}, makers
    cli_source = (root / "fal_core" / "cli.py").read_text()
    assert cli_source.count(".mkdir(") == 1 and "out_dir.mkdir(" in cli_source
    assert cli_source.count(" print(") == 1  # the one inside _print
