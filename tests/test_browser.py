"""The front-end extension in headless Chromium against a real ComfyUI and the fal emulator.

Skipped unless COMFYUI_DIR names a ComfyUI checkout and Chromium is installed (Debian: apt-get
install chromium). Screenshots are left in the test's temporary folder (pytest --basetemp).
"""

import asyncio
import json
import os
import stat
import time

import httpx
import pytest

from cdp import CHROMIUM, chromium_page
from comfyui_server import EXAMPLES, PACK_FOLDER, requires_comfyui, running_comfyui
from fal_emulator import FalEmulator

pytestmark = [requires_comfyui, pytest.mark.skipif(not CHROMIUM, reason="chromium is not installed")]

KEY = "browser-key-id:browser-secret-0123456789"
SECRET = KEY.split(":")[1]
APP = "window.comfyAPI.app.app"
EXTENSION = f"/extensions/{PACK_FOLDER}/fal_sd3.js"
# The editor is usable once our extension ran and the nodes' definitions came from the server.
READY = (f"{APP}?.graph && {APP}.extensions?.some((e) => e.name === 'fal_sd3')"
         " && !!window.LiteGraph?.registered_node_types?.FalSD3Img2Img")
KEY_STATUS = "document.querySelector('.fal-key-entry .fal-key-status')?.textContent"


@pytest.fixture(scope="module")
def emulator():
    with FalEmulator(key=KEY, job_seconds=0.3) as emu:
        yield emu


@pytest.fixture(scope="module")
def comfyui(emulator, tmp_path_factory):
    """ComfyUI pointed at the emulator with no key in its environment: only the dialog can set one."""
    base = tmp_path_factory.mktemp("comfyui")
    env = {name: value for name, value in os.environ.items()
           if name not in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "FAL_SD3_STATE_DIR")}
    env.update({name: value for name, value in emulator.env().items() if name != "FAL_KEY"})
    with running_comfyui(base, env) as url:
        # A first visit opens the template browser over the canvas; a returning user's does not.
        httpx.post(url + "/settings", json={"Comfy.TutorialCompleted": True}, timeout=10)
        yield {"url": url, "base": base, "key_file": base / "user" / "fal_sd3" / "fal_key"}


async def open_editor(page, url):
    await page.send("Page.navigate", url=url)
    await page.wait_for(READY, 120)


async def reload(page):
    await page.evaluate("window.falOldPage = true")  # gone once the new page is there
    await page.send("Page.reload")
    await page.wait_for(f"!window.falOldPage && {READY}", 120)


async def open_key_setting(page):
    await page.evaluate(f"{APP}.extensionManager.command.execute('Comfy.ShowSettingsDialog')")
    await page.wait_for("!!document.querySelector('li[aria-label=\"fal\"]')")
    await page.evaluate("document.querySelector('li[aria-label=\"fal\"]').click()")
    await page.wait_for("!!document.querySelector('input[aria-label=\"fal API key\"]')")


async def click_button(page, label):
    await page.evaluate(f"""[...document.querySelectorAll('.fal-key-entry button')]
                            .find((b) => b.textContent === {json.dumps(label)}).click()""")


async def node_lines(page, node_id):
    return await page.evaluate(
        f"import({json.dumps(EXTENSION)}).then((m) => m.board.linesFor({json.dumps(node_id)}).map((l) => l.text))")


async def run_and_watch(page, comfyui, screenshot):
    """Queue the graph in the editor; every set of lines node 3 showed, until the prompt ended."""
    url = comfyui["url"]
    done_before = len(httpx.get(url + "/history", timeout=10).json())
    await page.evaluate(f"{APP}.queuePrompt(0, 1)")
    seen, shot = [], False
    deadline = time.monotonic() + 120
    while len(httpx.get(url + "/history", timeout=10).json()) == done_before:
        assert time.monotonic() < deadline, "the prompt did not finish in 120 s"
        lines = await node_lines(page, "3")
        if lines and (not seen or seen[-1] != lines):
            seen.append(lines)
        if not shot and any(line.startswith("running") for line in lines):
            await page.screenshot(screenshot)
            shot = True
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # the last event can trail the history entry by a moment
    return seen, await node_lines(page, "3")


def test_key_set_in_the_dialog_is_used_by_the_node_and_shown_while_running(comfyui, emulator, tmp_path):
    url, key_file = comfyui["url"], comfyui["key_file"]
    workflow = json.loads((EXAMPLES / "sd3_img2img_fal.json").read_text())

    async def scenario():
        async with chromium_page(tmp_path / "profile") as page:
            await open_editor(page, url)
            await open_key_setting(page)
            assert "No key set" in await page.wait_for(KEY_STATUS)
            await page.evaluate("document.querySelector('input[aria-label=\"fal API key\"]').focus()")
            await page.type_text("not a fal key")
            await click_button(page, "Save")
            refused = await page.wait_for(f"{KEY_STATUS}?.includes('not saved') && {KEY_STATUS}")
            assert "key_id:key_secret" in refused and not key_file.exists()
            await page.evaluate("document.querySelector('input[aria-label=\"fal API key\"]').focus()")
            await page.type_text(KEY)
            await click_button(page, "Save")
            assert "A key is saved" in await page.wait_for(f"{KEY_STATUS}?.startsWith('Saved') && {KEY_STATUS}")
            assert await page.evaluate("document.querySelector('input[aria-label=\"fal API key\"]').value") == ""

            await reload(page)
            await open_key_setting(page)
            assert "A key is saved" in await page.wait_for(KEY_STATUS)
            await page.screenshot(tmp_path / "settings.png")
            storage = await page.evaluate("JSON.stringify({...localStorage}) + JSON.stringify({...sessionStorage})")
            await page.press("Escape", "Escape", 27)

            await page.evaluate(f"{APP}.loadGraphData({json.dumps(workflow)})")
            emulator.queue_seconds, emulator.queue_positions, emulator.job_seconds = 1.0, 2, 3.0
            seen, after = await run_and_watch(page, comfyui, tmp_path / "running.png")
            graph = await page.evaluate(f"JSON.stringify({APP}.graph.serialize())")

            # Cleared with the dialog's button: the next run fails and the node says why.
            await open_key_setting(page)
            await click_button(page, "Clear")
            assert "No key set" in await page.wait_for(f"{KEY_STATUS}?.startsWith('Cleared') && {KEY_STATUS}")
            await page.press("Escape", "Escape", 27)
            await page.evaluate(f"{APP}.graph.getNodeById(3).widgets.find((w) => w.name === 'seed').value = 7")
            _, failed = await run_and_watch(page, comfyui, tmp_path / "unused.png")
            await page.screenshot(tmp_path / "failed.png")
            return storage, seen, after, graph, failed, page.console

    storage, seen, after, graph, failed, console = asyncio.run(scenario())

    # The key lives in ComfyUI's user folder, owner-only, and was removed by Clear; never a setting.
    assert not key_file.exists()
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    settings = httpx.get(comfyui["url"] + "/settings", timeout=10).text
    settings_file = (comfyui["base"] / "user" / "default" / "comfy.settings.json").read_text()
    server_log = (comfyui["base"] / "comfyui.log").read_text()
    for text in (settings, settings_file, storage, graph, "\n".join(console), server_log):
        assert SECRET not in text

    # What the node showed while it ran: queue position, running with request id and fal's log.
    shown = "\n".join("\n".join(lines) for lines in seen)
    request_id = next(iter(emulator.jobs))
    assert "in queue (position" in shown
    assert f"running · {request_id}" in shown and "  fal: " in shown
    assert all(lines[0].startswith("fal · ") and lines[0].endswith(" s") for lines in seen)
    assert after == []  # a successful run clears its lines
    assert failed[0].startswith("fal · failed after") and "Settings > fal > fal API key" in " ".join(failed)

    outputs = list((comfyui["base"] / "output").glob("fal_sd3_*.png"))
    assert outputs and all(SECRET.encode() not in path.read_bytes() for path in outputs)


def test_key_route_on_comfyui_refuses_other_sites_and_never_answers_the_key(comfyui):
    url = comfyui["url"]
    answer = httpx.post(url + "/fal/key", json={"key": KEY}, headers={"Origin": "http://evil.example"}, timeout=10)
    assert answer.status_code == 403 and not comfyui["key_file"].exists()
    answer = httpx.post(url + "/fal/key", json={"key": KEY}, timeout=10)
    assert answer.json() == {"configured": True, "source": "file"}
    assert stat.S_IMODE(comfyui["key_file"].stat().st_mode) == 0o600
    assert SECRET not in httpx.get(url + "/fal/key", timeout=10).text
    assert httpx.delete(url + "/fal/key", timeout=10).json() == {"configured": False, "source": None}


def test_size_preset_shows_width_and_height_only_for_custom_and_titles_the_size(comfyui, tmp_path):
    workflow = json.loads((EXAMPLES / "sd3_img2img_fal.json").read_text())
    node = f"{APP}.graph.getNodeById(2)"
    state = f"""(() => {{ const n = {node}; const w = (name) => n.widgets.find((x) => x.name === name);
                  return {{title: n.title, hidden: [w('width').hidden, w('height').hidden], height: n.size[1],
                          fits: n.size[1] >= n.computeSize()[1]}}; }})()"""

    def choose(name, value):
        return f"""(() => {{ const n = {node}; n.widgets.find((x) => x.name === {json.dumps(name)})
                     .setValue({json.dumps(value)}, {{e: null, node: n, canvas: {APP}.canvas}}); }})()"""

    async def scenario():
        async with chromium_page(tmp_path / "profile") as page:
            await open_editor(page, comfyui["url"])
            await page.evaluate(f"{APP}.loadGraphData({json.dumps(workflow)})")
            await page.wait_for(f"{node}?.title.includes('·')")  # the node is set up a moment after
            states = [await page.evaluate(state)]
            for name, value in [("preset", "custom"), ("width", 640), ("preset", "landscape_16_9"),
                                ("preset", "match input")]:
                await page.evaluate(choose(name, value))
                states.append(await page.evaluate(state))
            await page.evaluate(choose("preset", "custom"))
            await page.evaluate(f"{APP}.canvas.setDirty(true, true)")
            await asyncio.sleep(0.3)
            await page.screenshot(tmp_path / "size_preset.png")
            return states

    states = asyncio.run(scenario())
    assert [(s["title"], s["hidden"]) for s in states] == [
        ("SD3 Image Size · 1024×1024", [True, True]),
        ("SD3 Image Size · 1024×1024", [False, False]),
        ("SD3 Image Size · 640×1024", [False, False]),
        ("SD3 Image Size · 1024×576", [True, True]),
        ("SD3 Image Size · match input", [True, True]),
    ]
    assert all(s["fits"] for s in states)  # the node is always tall enough for its widgets
    assert states[3]["height"] < states[2]["height"]  # and shrinks when two of them go
