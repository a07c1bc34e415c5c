"""The front-end extension in headless Chromium against a real ComfyUI and the fal emulator.

Skipped unless COMFYUI_DIR names a ComfyUI checkout and Chromium is installed (Debian: apt-get
install chromium). Every test runs on the front end ComfyUI pins and, when
COMFYUI_FRONT_END_ROOT names another one (an unzipped comfyui-frontend-package's
``comfyui_frontend_package/static``), on that one too. Screenshots are left in each test's
temporary folder (pytest --basetemp).
"""

import asyncio
import json
import os
import stat
import time

import httpx
import pytest

from cdp import CHROMIUM, chromium, chromium_page
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
KEY_INPUT = "document.querySelector('input[aria-label=\"fal API key\"]')"
FRONT_ENDS = [pytest.param(None, id="pinned-front-end")]
if os.environ.get("COMFYUI_FRONT_END_ROOT"):
    FRONT_ENDS.append(pytest.param(os.environ["COMFYUI_FRONT_END_ROOT"], id="front-end-root"))


def template(name="sd3_img2img_fal.json"):
    return json.loads((EXAMPLES / name).read_text())


@pytest.fixture(scope="module")
def emulator():
    with FalEmulator(key=KEY, job_seconds=0.3) as emu:
        yield emu


@pytest.fixture(scope="module", params=FRONT_ENDS)
def comfyui(request, emulator, tmp_path_factory):
    """ComfyUI pointed at the emulator with no key in its environment: only the dialog can set one."""
    base = tmp_path_factory.mktemp("comfyui")
    env = {name: value for name, value in os.environ.items()
           if name not in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "FAL_SD3_STATE_DIR", "FAL_SD3_DAILY_BUDGET")}
    env.update({name: value for name, value in emulator.env().items() if name != "FAL_KEY"})
    args = ["--front-end-root", request.param] if request.param else []
    with running_comfyui(base, env, args=args) as url:
        # A first visit opens the template browser over the canvas; a returning user's does not.
        httpx.post(url + "/settings", json={"Comfy.TutorialCompleted": True}, timeout=10)
        yield {"url": url, "base": base, "key_file": base / "user" / "fal_sd3" / "fal_key"}


@pytest.fixture
def key_saved(comfyui):
    assert httpx.post(comfyui["url"] + "/fal/key", json={"key": KEY}, timeout=10).status_code == 200
    yield
    httpx.delete(comfyui["url"] + "/fal/key", timeout=10)


async def open_editor(page, url):
    await page.send("Page.navigate", url=url)
    await page.wait_for(READY, 120)
    await asyncio.sleep(1.5)  # the editor reopens the workflows it had open a moment after it is ready


async def reload(page):
    await page.evaluate("window.falOldPage = true")  # gone once the new page is there
    await page.send("Page.reload")
    await page.wait_for(f"!window.falOldPage && {READY}", 120)


async def load(page, workflow):
    await page.evaluate(f"{APP}.loadGraphData({json.dumps(workflow)})")
    await settled(page)


async def settled(page):
    """Node 3 is there and laid out by the canvas (newer front ends replace widgets meanwhile)."""
    await page.evaluate(f"{APP}.canvas.setDirty(true, true)")
    await page.wait_for(f"{APP}.graph.getNodeById(3)?.widgets?.find((w) => w.name === 'fal_status')?.y > 0")


# The settings dialog's "fal" category: a list item in front end 1.27, a button under "Other" in newer ones.
FAL_CATEGORY = """[...document.querySelectorAll('[role=dialog] li, [role=dialog] nav *')]
                  .find((e) => e.textContent.trim() === 'fal' && e.querySelectorAll('*').length <= 3)"""


async def open_key_setting(page):
    await page.evaluate(f"{APP}.extensionManager.command.execute('Comfy.ShowSettingsDialog')")
    await page.wait_for(f"!!{FAL_CATEGORY}")
    await page.evaluate(f"{FAL_CATEGORY}.click()")
    await page.wait_for(f"!!{KEY_INPUT}")


async def click_button(page, label):
    await page.evaluate(f"""[...document.querySelectorAll('.fal-key-entry button')]
                            .find((b) => b.textContent === {json.dumps(label)}).click()""")


async def type_key(page, text):
    await page.evaluate(f"{KEY_INPUT}.focus()")
    await page.type_text(text)


def extension(expression):
    """A page expression over the extension's module `m` and the app `app`."""
    return f"import({json.dumps(EXTENSION)}).then((m) => {{ const app = {APP}; return {expression}; }})"


async def shown(page, node_id=3):
    """The status lines node `node_id` draws now, wrapped as on the canvas, and where they are."""
    return await page.evaluate(extension(f"""(() => {{
        const node = app.graph.getNodeById({node_id});
        const widget = node.widgets.find((w) => w.name === 'fal_status');
        const lines = m.shownLines(node, widget.width || node.size[0]);
        const height = widget.computeSize(node.size[0])[1];
        return {{ lines: lines.map((l) => l.text), tones: lines.map((l) => l.tone), top: widget.y,
                 bottom: widget.y + Math.max(height, 0), nodeHeight: node.size[1],
                 foreign: node.widgets.filter((w) => w.name.startsWith('$$')).map((w) => w.name) }};
    }})()"""))


async def graph_values(page):
    """Every node's serialized widget values, and its widgets' values by name, by node id."""
    return await page.evaluate(f"""(() => {{
        const graph = {APP}.graph.serialize();
        return Object.fromEntries(graph.nodes.map((n) => {{
            const live = {APP}.graph.getNodeById(n.id);
            const named = live.widgets?.filter((w) => w.serialize !== false && w.options?.serialize !== false)
                .map((w) => [w.name, w.value]) ?? [];
            return [n.id, {{ type: n.type, values: n.widgets_values ?? [], named }}];
        }}));
    }})()""")


async def close_dialogs(page):
    """Close ComfyUI's error dialog (it opens over the canvas when a prompt fails)."""
    await page.evaluate("""[...document.querySelectorAll('[role=dialog] button')]
                           .filter((b) => /close/i.test(b.getAttribute('aria-label') || ''))
                           .forEach((b) => b.click())""")
    await page.evaluate(f"{APP}.canvas.setDirty(true, true)")
    await asyncio.sleep(0.3)


def dollars(amount):
    """An amount as the extension writes it (web/lib/price.js formatMoney)."""
    return next((f"${amount:.{d}f}" for d in (2, 3) if abs(round(amount, d) - amount) < 1e-9), f"${amount:.4f}")


def history_count(url):
    return len(httpx.get(url + "/history", timeout=10).json())


async def run_and_watch(page, comfyui, screenshot=None, until=None):
    """Queue the graph in the editor; every set of lines node 3 showed, until the prompt ended."""
    url = comfyui["url"]
    done_before = history_count(url)
    await page.evaluate(f"{APP}.queuePrompt(0, 1)")
    seen, shot = [], False
    deadline = time.monotonic() + 120
    while history_count(url) == done_before:
        assert time.monotonic() < deadline, "the prompt did not finish in 120 s"
        state = await shown(page)
        if state["lines"] and (not seen or seen[-1]["lines"] != state["lines"]):
            seen.append(state)
        if screenshot and not shot and until(state["lines"]):
            await page.evaluate(f"{APP}.canvas.setDirty(true, true)")
            await asyncio.sleep(0.1)
            await page.screenshot(screenshot)
            shot = True
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # the last event can trail the history entry by a moment
    return seen, await shown(page)


def test_key_set_in_the_dialog_is_used_by_the_node_and_shown_while_running(comfyui, emulator, tmp_path):
    url, key_file = comfyui["url"], comfyui["key_file"]
    jobs_before = set(emulator.jobs)  # the emulator serves every front end's ComfyUI in turn

    async def scenario():
        async with chromium_page(tmp_path / "profile") as page:
            await open_editor(page, url)
            await open_key_setting(page)
            assert "No key set" in await page.wait_for(KEY_STATUS)
            await type_key(page, "not a fal key")
            await click_button(page, "Save")
            refused = await page.wait_for(f"{KEY_STATUS}?.includes('not saved') && {KEY_STATUS}")
            assert "key_id:key_secret" in refused and not key_file.exists()
            # A refused key stays in the field, to be corrected rather than typed again.
            assert await page.evaluate(f"{KEY_INPUT}.value") == "not a fal key"
            await page.evaluate(f"{KEY_INPUT}.value = ''")
            tests = []
            await type_key(page, "wrong-id:wrong-secret")
            await click_button(page, "Test")
            tests.append(await page.wait_for(f"!{KEY_STATUS}?.startsWith('Asking') && {KEY_STATUS}"))
            await page.evaluate(f"{KEY_INPUT}.value = ''")
            await type_key(page, KEY)
            await click_button(page, "Save")
            assert "A key is saved" in await page.wait_for(f"{KEY_STATUS}?.startsWith('Saved') && {KEY_STATUS}")
            assert await page.evaluate(f"{KEY_INPUT}.value") == ""
            await click_button(page, "Test")
            tests.append(await page.wait_for(f"!{KEY_STATUS}?.startsWith('Asking') && {KEY_STATUS}"))
            await page.screenshot(tmp_path / "key_test.png")

            await reload(page)
            await open_key_setting(page)
            assert "A key is saved" in await page.wait_for(KEY_STATUS)
            await page.screenshot(tmp_path / "settings.png")
            storage = await page.evaluate("JSON.stringify({...localStorage}) + JSON.stringify({...sessionStorage})")
            await page.press("Escape", "Escape", 27)

            await load(page, template())
            emulator.queue_seconds, emulator.queue_positions, emulator.job_seconds = 1.0, 2, 3.0
            seen, after = await run_and_watch(page, comfyui, tmp_path / "running.png",
                                              lambda lines: any(line.startswith("running") for line in lines))
            graph = await page.evaluate(f"JSON.stringify({APP}.graph.serialize())")

            # Cleared with the dialog's button: the next run fails and the node says why.
            await open_key_setting(page)
            await click_button(page, "Clear")
            assert "No key set" in await page.wait_for(f"{KEY_STATUS}?.startsWith('Cleared') && {KEY_STATUS}")
            await page.press("Escape", "Escape", 27)
            await page.evaluate(f"{APP}.graph.getNodeById(3).widgets.find((w) => w.name === 'seed').value = 7")
            _, failed = await run_and_watch(page, comfyui)
            await close_dialogs(page)
            await page.screenshot(tmp_path / "failed.png")
            return storage, tests, seen, after, graph, failed, page.console

    storage, tests, seen, after, graph, failed, console = asyncio.run(scenario())
    emulator.queue_seconds, emulator.queue_positions, emulator.job_seconds = 0.0, 0, 0.3

    # The key lives in ComfyUI's user folder, owner-only, and was removed by Clear; never a setting.
    assert not key_file.exists()
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    settings = httpx.get(comfyui["url"] + "/settings", timeout=10).text
    settings_file = (comfyui["base"] / "user" / "default" / "comfy.settings.json").read_text()
    server_log = (comfyui["base"] / "comfyui.log").read_text()
    for text in (settings, settings_file, storage, graph, "\n".join(console), server_log, *tests):
        assert SECRET not in text
    # Test: the field's wrong key is refused by fal, the saved one accepted; no job was run.
    assert tests[0].startswith("Key test failed") and tests[1] == "fal accepted the saved key."

    # What the node showed while it ran: queue position, running with request id and fal's log.
    text = "\n".join("\n".join(state["lines"]) for state in seen)
    request_id = next(job for job in emulator.jobs if job not in jobs_before)
    assert "in queue (position" in text or "next in queue" in text
    assert f"running · {request_id}" in text and "  fal: " in text
    running = [state for state in seen if state["lines"][0].startswith("fal · ")]
    assert running and all(state["lines"][0].endswith(" s") for state in running)
    # After the run, one summary line stays; a failed run replaces it with its error, in full.
    assert len(after["lines"]) == 1 and after["lines"][0].startswith("done · 1 request · ")
    assert failed["lines"][0].startswith("failed after") and "Settings > fal > fal API key" in " ".join(failed["lines"])

    outputs = list((comfyui["base"] / "output").glob("fal_sd3_*.png"))
    assert outputs and all(SECRET.encode() not in path.read_bytes() for path in outputs)


def test_widget_values_survive_a_run_a_save_a_new_tab_and_switching_tabs(comfyui, key_saved, tmp_path):
    """The money bug: after a run, reopening the workflow must not shift the fal node's values."""
    workflow = template()
    expected = {n["id"]: n["widgets_values"] for n in workflow["nodes"]}
    url = comfyui["url"]

    async def switch_tabs(page):
        await page.evaluate(f"{APP}.extensionManager.command.execute('Comfy.NewBlankWorkflow')")
        await page.wait_for(f"!{APP}.graph.getNodeById(3)")
        await page.evaluate(f"{APP}.extensionManager.command.execute('Workspace.PreviousOpenedWorkflow')")
        await settled(page)
        return await graph_values(page)

    async def scenario():
        async with chromium(tmp_path / "profile") as browser:
            page = await browser.first_page()
            await open_editor(page, url)
            await load(page, workflow)
            before = await graph_values(page)
            await run_and_watch(page, comfyui)
            await page.evaluate(f"{APP}.canvas.setDirty(true, true)")
            await asyncio.sleep(0.3)
            await page.screenshot(tmp_path / "after_run.png")
            after = await graph_values(page)
            saved = await page.evaluate(f"{APP}.graph.serialize()")
            switched = await switch_tabs(page)
            # Reopened in a new tab, from the saved file, then through a tab switch there too.
            tab = await browser.new_tab()
            await open_editor(tab, url)
            await load(tab, saved)
            reopened = await graph_values(tab)
            switched_again = await switch_tabs(tab)
            await reload(tab)  # the editor restores the workflow it had
            await settled(tab)
            restored = await graph_values(tab)
            return before, after, saved, switched, reopened, switched_again, restored

    before, after, saved, *others = asyncio.run(scenario())
    assert before["3"]["values"] == expected[3] and before["2"]["values"] == expected[2]
    for state in (after, *others):
        assert state == before
    fal_node = next(n for n in saved["nodes"] if n["type"] == "FalSD3Img2Img")
    assert fal_node["widgets_values"] == expected[3]


REPEAT = 10  # the Repeat Image Batch node's id in batch_of_three(), after the template's own


def batch_of_three():
    """The fal template with a batch of three pictures: Load Image, then Repeat Image Batch."""
    workflow = template()
    nodes = {n["id"]: n for n in workflow["nodes"]}
    workflow["nodes"].append({
        "id": REPEAT, "type": "RepeatImageBatch", "pos": [40, 660], "size": [320, 82], "flags": {}, "order": 1,
        "mode": 0, "inputs": [{"name": "image", "type": "IMAGE", "link": 1}],
        "outputs": [{"name": "IMAGE", "type": "IMAGE", "slot_index": 0, "links": [10]}],
        "properties": {"Node name for S&R": "RepeatImageBatch"}, "widgets_values": [3]})
    workflow["links"] = [[1, 1, 0, REPEAT, 0, "IMAGE"], [10, REPEAT, 0, 3, 0, "IMAGE"]] + workflow["links"][1:]
    nodes[1]["outputs"][0]["links"] = [1]
    nodes[3]["inputs"][0]["link"] = 10
    nodes[3]["size"] = [400, 480]
    nodes[3]["widgets_values"][4] = 1000  # a seed no other test uses: the journal must not serve it
    workflow["last_node_id"], workflow["last_link_id"] = REPEAT, 10
    return workflow


def test_one_status_inside_the_node_a_batch_of_three_its_summary_and_a_long_error(comfyui, emulator, key_saved,
                                                                                   tmp_path):
    long_error = ("The model could not process this picture because " + "its content was not understood; " * 8
                  + "try another picture or a lower strength.")

    async def scenario():
        async with chromium_page(tmp_path / "profile", height=1300) as page:
            await open_editor(page, comfyui["url"])
            await load(page, batch_of_three())
            emulator.queue_seconds, emulator.queue_positions, emulator.job_seconds = 1.0, 3, 2.0
            seen, after = await run_and_watch(
                page, comfyui, tmp_path / "batch_running.png",
                lambda lines: sum(" running · " in line for line in lines) >= 2)
            emulator.queue_seconds, emulator.queue_positions, emulator.job_seconds = 0.0, 0, 0.3
            await page.evaluate(f"{APP}.canvas.setDirty(true, true)")
            await asyncio.sleep(0.3)
            await page.screenshot(tmp_path / "batch_done.png")
            # A long error, wrapped in full inside the node, replacing the summary.
            await page.evaluate(f"{APP}.graph.getNodeById(3).widgets.find((w) => w.name === 'seed').value = 9")
            for _ in range(3):
                emulator.next_job(fail=long_error)
            _, failed = await run_and_watch(page, comfyui)
            await close_dialogs(page)
            await page.screenshot(tmp_path / "long_error.png")
            price = await page.evaluate(extension("m.prices.price"))
            return seen, after, failed, price

    seen, after, failed, price = asyncio.run(scenario())
    # Every request of the batch has its line while it runs, inside the node, with nothing of
    # ComfyUI's own progress text widget.
    three = [s for s in seen if sum(line.startswith(f"#{i} ") for line in s["lines"] for i in (1, 2, 3)) == 3]
    assert three, [s["lines"] for s in seen]
    for state in seen + [after, failed]:
        assert state["foreign"] == []
        assert state["bottom"] <= state["nodeHeight"] + 0.5, state
    summary = after["lines"]
    cost = 3 * price["unit_price"]
    assert len(summary) == 1 and summary[0].startswith("done · 3 requests · ")
    assert summary[0].endswith(f" s · {dollars(cost)}"), summary
    text = " ".join(failed["lines"][1:])
    assert failed["lines"][0].startswith("failed after") and "…" not in text
    assert long_error.split()[-1] in text and "its content was not understood" in text
    assert len(failed["lines"]) > 3  # wrapped, not cut


def test_a_run_past_the_daily_budget_is_refused_with_the_whole_reason_on_the_node(comfyui, emulator, key_saved,
                                                                                 tmp_path):
    url = comfyui["url"]
    submits = emulator.count("submit")
    workflow = template()
    next(n for n in workflow["nodes"] if n["id"] == 3)["widgets_values"][4] = 2000  # never run before

    async def scenario():
        async with chromium_page(tmp_path / "profile", height=1300) as page:
            await open_editor(page, url)
            # Set in the settings dialog, beside the key.
            await open_key_setting(page)
            budget_input = "document.querySelector('input[aria-label=\"fal daily budget\"]')"
            budget_status = "document.querySelector('.fal-budget-entry .fal-budget-status')?.textContent"
            assert (await page.wait_for(budget_status)).startswith("No daily budget; spent today: $")
            await page.evaluate(f"{budget_input}.focus()")
            await page.type_text("0.01")
            await page.evaluate("document.querySelector('.fal-budget-entry button').click()")
            saved = await page.wait_for(f"{budget_status}?.startsWith('Saved') && {budget_status}")
            await page.screenshot(tmp_path / "budget_setting.png")
            await page.press("Escape", "Escape", 27)
            await load(page, workflow)
            _, refused = await run_and_watch(page, comfyui)
            await close_dialogs(page)
            await page.screenshot(tmp_path / "budget_refused.png")
            return saved, refused

    try:
        saved, refused = asyncio.run(scenario())
    finally:
        httpx.post(url + "/fal/budget", json={"daily_budget": None}, timeout=10)
    assert saved.startswith("Saved. Daily budget $0.01; spent today: $")
    assert emulator.count("submit") == submits  # refused before anything was sent
    text = " ".join(refused["lines"][1:])
    assert refused["lines"][0].startswith("failed after") and set(refused["tones"]) == {"error"}
    assert "this run would cost" in text and "is spent today" in text and "the limit is 0.010 USD" in text
    assert text.endswith("Raise or clear the budget, or run again tomorrow.")
    assert refused["bottom"] <= refused["nodeHeight"] + 0.5


def test_price_badge_follows_num_images_and_the_batch(comfyui, tmp_path):
    async def scenario():
        async with chromium_page(tmp_path / "profile") as page:
            await open_editor(page, comfyui["url"])
            # The first render shows a price without waiting for the route.
            await load(page, template())
            texts = [await page.evaluate(extension("m.priceText(app.graph.getNodeById(3))"))]
            await page.evaluate(f"""(() => {{ const n = {APP}.graph.getNodeById(3);
                n.widgets.find((w) => w.name === 'num_images').setValue(3, {{e: null, node: n, canvas: {APP}.canvas}});
            }})()""")
            texts.append(await page.evaluate(extension("m.priceText(app.graph.getNodeById(3))")))
            await page.evaluate(f"{APP}.canvas.setDirty(true, true)")
            await asyncio.sleep(0.3)
            await page.screenshot(tmp_path / "price_badge.png")
            await load(page, batch_of_three())
            texts.append(await page.evaluate(extension("m.priceText(app.graph.getNodeById(3))")))
            drawn = await page.evaluate(
                f"{APP}.graph.getNodeById(3).badges.map((b) => (typeof b === 'function' ? b() : b).text)")
            price = await page.evaluate(extension("m.prices.price"))
            return texts, drawn, price

    texts, drawn, price = asyncio.run(scenario())
    unit = price["unit_price"]
    marker = " (published price)" if price["source"] == "published" else ""
    assert texts == [f"{dollars(unit)}/Run{marker}", f"{dollars(3 * unit)}/Run{marker}",
                     f"{dollars(3 * unit)}/Run{marker}"]
    assert texts[-1] in drawn


def test_early_errors_show_on_the_node_before_queueing(comfyui, tmp_path):
    async def scenario():
        async with chromium_page(tmp_path / "profile") as page:
            await open_editor(page, comfyui["url"])
            await load(page, template())
            states = [await shown(page)]
            await page.evaluate(f"{APP}.graph.getNodeById(3).disconnectInput(0)")
            states.append(await shown(page))
            upload = template("sd3_img2img_fal_upload.json")
            await load(page, upload)
            await page.evaluate(f"{APP}.graph.getNodeById(1).connect(0, {APP}.graph.getNodeById(3), 0)")
            await page.evaluate(f"{APP}.canvas.setDirty(true, true)")
            await asyncio.sleep(0.3)
            await page.screenshot(tmp_path / "both_connected.png")
            states.append(await shown(page))
            return states

    connected, neither, both = asyncio.run(scenario())
    assert connected["lines"] == []
    assert neither["lines"][0].startswith("Nothing to transform") and set(neither["tones"]) == {"error"}
    assert " ".join(both["lines"]).startswith("Both image and image_url are connected")
    assert both["bottom"] <= both["nodeHeight"] + 0.5


def test_key_route_on_comfyui_refuses_other_sites_and_never_answers_the_key(comfyui):
    url = comfyui["url"]
    answer = httpx.post(url + "/fal/key", json={"key": KEY}, headers={"Origin": "http://evil.example"}, timeout=10)
    assert answer.status_code == 403 and not comfyui["key_file"].exists()
    answer = httpx.post(url + "/fal/key", json={"key": KEY}, timeout=10)
    assert answer.json() == {"configured": True, "source": "file"}
    assert stat.S_IMODE(comfyui["key_file"].stat().st_mode) == 0o600
    assert SECRET not in httpx.get(url + "/fal/key", timeout=10).text
    assert httpx.delete(url + "/fal/key", timeout=10).json() == {"configured": False, "source": None}


def test_size_preset_labels_sizes_shows_width_and_height_only_for_custom(comfyui, tmp_path):
    workflow = template()
    node = f"{APP}.graph.getNodeById(2)"
    state = f"""(() => {{ const n = {node}; const w = (name) => n.widgets.find((x) => x.name === name);
                  const p = w('preset');
                  const last = n.widgets.filter((x) => !x.hidden).at(-1);
                  return {{title: n.title, hidden: [w('width').hidden, w('height').hidden], height: n.size[1],
                          fits: n.size[1] >= n.computeSize()[1], label: p._displayValue, value: p.value,
                          slack: n.size[1] - (last.y + 20)}}; }})()"""

    def choose(name, value):
        return f"""(() => {{ const n = {node}; n.widgets.find((x) => x.name === {json.dumps(name)})
                     .setValue({json.dumps(value)}, {{e: null, node: n, canvas: {APP}.canvas}}); }})()"""

    async def scenario():
        async with chromium_page(tmp_path / "profile") as page:
            await open_editor(page, comfyui["url"])
            await load(page, workflow)
            await page.wait_for(f"{node}?.title.includes('·')")  # the node is set up a moment after
            await page.evaluate(f"{APP}.canvas.setDirty(true, true)")
            await asyncio.sleep(0.3)
            states = [await page.evaluate(state)]
            await page.screenshot(tmp_path / "size_preset_square.png")
            for name, value in [("preset", "custom"), ("width", 640), ("preset", "landscape_16_9"),
                                ("preset", "match input")]:
                await page.evaluate(choose(name, value))
                await page.evaluate(f"{APP}.canvas.setDirty(true, true)")
                await asyncio.sleep(0.2)
                states.append(await page.evaluate(state))
            await page.evaluate(choose("preset", "portrait_4_3"))
            saved = await page.evaluate(f"{node}.serialize().widgets_values")
            tooltip = await page.evaluate(
                f"{APP}.graph.getNodeById(2).constructor.nodeData.input.required.preset[1].tooltip")
            await page.evaluate(choose("preset", "custom"))
            await page.evaluate(f"{APP}.canvas.setDirty(true, true)")
            await asyncio.sleep(0.3)
            await page.screenshot(tmp_path / "size_preset.png")
            return states, saved, tooltip

    states, saved, tooltip = asyncio.run(scenario())
    assert [(s["title"], s["hidden"], s["label"]) for s in states] == [
        ("SD3 Image Size · 1024×1024", [True, True], "square_hd · 1024×1024"),
        ("SD3 Image Size · 1024×1024", [False, False], "custom"),
        ("SD3 Image Size · 640×1024", [False, False], "custom"),
        ("SD3 Image Size · 1024×576", [True, True], "landscape_16_9 · 1024×576"),
        ("SD3 Image Size · match input", [True, True], "match input"),
    ]
    assert saved == ["portrait_4_3", 640, 1024]  # labels only: the saved value is the preset's name
    assert "preset" in tooltip or "custom" in tooltip
    assert all(s["fits"] for s in states)  # the node is always tall enough for its widgets
    assert states[3]["height"] < states[2]["height"]  # and shrinks when two of them go
    hidden = [s for s in states if s["hidden"] == [True, True]]
    assert all(s["slack"] < 30 for s in hidden), [(s["label"], s["height"], s["slack"]) for s in states]
