"""Headless Chromium driven over the DevTools protocol, for the browser test.

Only the few DevTools commands the test needs, over aiohttp's websocket client (already a test
dependency), so that no browser automation package has to be installed.
"""

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import aiohttp

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class ScriptError(Exception):
    """A page script threw; the message is the page's own."""


class Page:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self.console: list[str] = []  # every console message and log entry the page produced
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self._ws:
            data = json.loads(message.data)
            if "id" in data and data["id"] in self._waiting:
                self._waiting.pop(data["id"]).set_result(data)
            elif data.get("method") == "Runtime.consoleAPICalled":
                args = data["params"]["args"]
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
            elif data.get("method") == "Log.entryAdded":
                self.console.append(data["params"]["entry"].get("text", ""))

    async def send(self, method: str, **params) -> dict:
        future = asyncio.get_running_loop().create_future()
        message_id = next(self._ids)
        self._waiting[message_id] = future
        await self._ws.send_str(json.dumps({"id": message_id, "method": method, "params": params}))
        answer = await asyncio.wait_for(future, 60)
        if "error" in answer:
            raise ScriptError(f"{method}: {answer['error']}")
        return answer["result"]

    async def evaluate(self, expression: str):
        """The value of a page expression (awaited when it is a promise)."""
        result = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True,
                                 returnByValue=True, userGesture=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise ScriptError(details.get("exception", {}).get("description") or details.get("text"))
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 30, interval: float = 0.1):
        """Evaluate until the expression is truthy; its value."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                value = await self.evaluate(expression)
            except ScriptError:
                value = None
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"page never made true: {expression}")
            await asyncio.sleep(interval)

    async def type_text(self, text: str) -> None:
        """Type into the focused element, as a user would."""
        await self.send("Input.insertText", text=text)

    async def press(self, key: str, code: str, key_code: int) -> None:
        for kind in ("keyDown", "keyUp"):
            await self.send("Input.dispatchKeyEvent", type=kind, key=key, code=code,
                            windowsVirtualKeyCode=key_code)

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))


class Browser:
    """A headless Chromium: its tabs share one profile (localStorage, sessionStorage per tab)."""

    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self._session = session
        self._port = port
        self._sockets: list[aiohttp.ClientWebSocketResponse] = []
        self._pages: list[Page] = []

    async def _attach(self, target: dict) -> Page:
        ws = await self._session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        self._sockets.append(ws)
        page = Page(ws)
        self._pages.append(page)
        for domain in ("Page", "Runtime", "Log"):
            await page.send(f"{domain}.enable")
        return page

    async def first_page(self) -> Page:
        async with self._session.get(f"http://127.0.0.1:{self._port}/json/list") as answer:
            targets = await answer.json()
        return await self._attach(next(t for t in targets if t["type"] == "page"))

    async def new_tab(self, url: str = "about:blank") -> Page:
        """Open a new tab, as a user opening the editor a second time would."""
        async with self._session.put(f"http://127.0.0.1:{self._port}/json/new?{url}") as answer:
            target = await answer.json()
        return await self._attach(target)

    async def close(self) -> None:
        for page in self._pages:
            page._reader.cancel()
        for ws in self._sockets:
            await ws.close()


@asynccontextmanager
async def chromium(profile: Path, width: int = 1600, height: int = 1000) -> AsyncIterator[Browser]:
    """A fresh headless Chromium with its own profile folder."""
    process = subprocess.Popen(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--remote-debugging-port=0", f"--user-data-dir={profile}", f"--window-size={width},{height}",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port = await _debugging_port(profile / "DevToolsActivePort", process)
        async with aiohttp.ClientSession() as session:
            browser = Browser(session, port)
            try:
                yield browser
            finally:
                await browser.close()
    finally:
        process.terminate()
        process.wait(10)


@asynccontextmanager
async def chromium_page(profile: Path, width: int = 1600, height: int = 1000) -> AsyncIterator[Page]:
    """One page of a fresh headless Chromium with its own profile folder."""
    async with chromium(profile, width, height) as browser:
        yield await browser.first_page()


async def _debugging_port(port_file: Path, process: subprocess.Popen) -> int:
    for _ in range(300):
        if port_file.exists() and port_file.read_text().strip():
            return int(port_file.read_text().splitlines()[0])
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with status {process.returncode} before it listened")
        await asyncio.sleep(0.1)
    raise TimeoutError("chromium did not open its DevTools port in 30 s")
