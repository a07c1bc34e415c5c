"""The editor's routes on ComfyUI's server: the fal key, its test, the price and the budget.

``POST /fal/key`` with ``{"key": "key_id:key_secret"}`` saves it in the key file,
``GET /fal/key`` says whether a key is set and where it comes from (never the key),
``DELETE /fal/key`` removes the file. The key never becomes a ComfyUI setting: those are served
to anyone who reaches the server by ``GET /settings``.

``POST /fal/key/test`` (``{}`` or ``{"key": ...}``) asks fal whether it accepts the key, running
no job. ``GET /fal/price`` answers the unit price at once and refreshes it in the background.
``GET /fal/budget`` and ``POST /fal/budget`` (``{"daily_budget": dollars|null}``) read and set
the daily budget, with today's spend.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import urlsplit

from ..fal_core.config import KeyFile, Secret, check_key_form, resolve_key
from ..fal_core.errors import ConfigError, FalError, HTTPStatusError, MissingKeyError
from . import comfy

ROUTE = "/fal/key"
# Names (or host:port) besides loopback under which the user reaches ComfyUI, comma-separated.
ALLOWED_HOSTS_ENV = "FAL_SD3_ALLOWED_HOSTS"
KEY_TEST_ROUTE = "/fal/key/test"
PRICE_ROUTE = "/fal/price"
BUDGET_ROUTE = "/fal/budget"
_ENDPOINT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*){1,4}$")
log = logging.getLogger("fal_sd3")

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _authority(host: str | None, port: int | None, scheme: str) -> str:
    port = None if port == _DEFAULT_PORTS.get(scheme) else port
    return f"{(host or '').lower()}:{port or ''}"


def cross_origin(headers: Mapping[str, str], host: str | None) -> str | None:
    """Why a request comes from another site (for a 403), or None when it may go on.

    A page on another site could otherwise save a key of its own choosing, which would send the
    user's images to its fal account. Requests without ``Origin`` (curl, scripts) are not a
    browser's cross-site requests and are let through.
    """
    if headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        return "Sec-Fetch-Site is cross-site"
    origin = headers.get("Origin")
    if origin is None:
        return None
    parts = urlsplit(origin)
    try:
        origin_authority = _authority(parts.hostname, parts.port, parts.scheme)
        served = urlsplit("//" + (host or ""))
        host_authority = _authority(served.hostname, served.port, parts.scheme)
    except ValueError:
        return f"Origin {origin!r} is not a URL"
    if not parts.hostname or origin_authority != host_authority:
        return f"Origin {origin!r} is not this server ({host!r})"
    return None


def untrusted_host(host: str | None, env: Mapping[str, str] = os.environ) -> str | None:
    """Why ``host`` (the Host header) is not this server for sure (for a 403), or None.

    DNS rebinding: a page on ``rebind.attacker.example`` points its name at 127.0.0.1, and the
    browser then treats ComfyUI as that page's own site, Origin included. Only the Host header
    still shows the attacker's name, so it must be a loopback name or address, or a name the user
    allowed in FAL_SD3_ALLOWED_HOSTS.
    """
    try:
        name = urlsplit("//" + (host or "")).hostname
    except ValueError:
        name = None
    if name and (name == "localhost" or _is_loopback_address(name)):
        return None
    allowed = {h.strip().lower() for h in env.get(ALLOWED_HOSTS_ENV, "").split(",") if h.strip()}
    if name and (name in allowed or (host or "").lower() in allowed):
        return None
    return (f"Host {host!r} is not this machine's loopback name or address; if ComfyUI is reached under that "
            f"name, add it to {ALLOWED_HOSTS_ENV} (comma-separated) in ComfyUI's environment")


def _is_loopback_address(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def refusal(headers: Mapping[str, str], host: str | None, env: Mapping[str, str] = os.environ) -> str | None:
    """Why a request to a route that changes state or uses the key is refused, or None.

    The one guard of every such route: the Host must be this machine (against DNS rebinding) and
    the request must not come from another site.
    """
    return untrusted_host(host, env) or cross_origin(headers, host)


def _answer(code: int = 200, /, **body):
    """A JSON answer with HTTP status ``code``; ``body`` may hold a field named status."""
    from aiohttp import web  # only ever called inside ComfyUI or tests, which have aiohttp

    return web.json_response(body, status=code, headers={"Cache-Control": "no-store"})


def _not_accepted(status: int | None, message: str):
    """The key test's answer when the key cannot be used (``status``: fal's HTTP status)."""
    return _answer(ok=False, status=status, message=message)


async def _json_body(request) -> dict | None:
    try:
        body = await request.json() if request.can_read_body else {}
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


class _Handlers:
    """The routes' handlers; ``key_file`` is called on every request: the state folder can move
    with the environment."""

    def __init__(self, key_file: Callable[[], Path], env: Mapping[str, str]) -> None:
        self.key_file = key_file
        self.env = env

    def current(self):
        """Whether the nodes have a key and where it comes from, as the next run resolves it;
        never the key."""
        try:
            key, source = resolve_key(self.env, self.key_file())
            return _answer(configured=key is not None, source=source)
        except ConfigError as exc:
            return _answer(500, error=str(exc))

    async def read(self, request):
        return self.current()

    async def store(self, request):
        try:
            body = await request.json()
        except ValueError:
            body = None
        key = body.get("key") if isinstance(body, dict) else None
        if not isinstance(key, str):
            return _answer(400, error='the body must be JSON {"key": "key_id:key_secret"}')
        problem = check_key_form(key)
        if problem is not None:
            return _answer(400, error=f"fal API key not saved: {problem}. Copy the whole key from "
                                      "fal.ai > Dashboard > Keys.")
        path = self.key_file()
        try:
            # fsync can take a while on a busy disk, and the event loop also carries the websocket.
            await asyncio.to_thread(KeyFile(path).save, key.strip())
        except OSError as exc:
            return _answer(500, error=f"fal API key not saved: cannot write {path}: {exc.strerror}. "
                                      "Check that ComfyUI's user folder is writable.")
        log.info("fal key saved to %s", path)
        from . import session
        # A price refused to the old key (or to no key) is asked for again with this one.
        session.price_cache().forget_failures()
        return self.current()

    async def remove(self, request):
        path = self.key_file()
        try:
            await asyncio.to_thread(KeyFile(path).clear)
        except OSError as exc:
            return _answer(500, error=f"fal API key not cleared: cannot remove {path}: {exc.strerror}.")
        log.info("fal key file %s removed", path)
        return self.current()

    async def test_key(self, request):
        from ..fal_core.key_check import check_key
        from . import session

        body = await _json_body(request)
        if body is None or not isinstance(body.get("key", ""), str):
            return _answer(400, error='the body must be JSON {} (the saved key) or {"key": "key_id:key_secret"}')
        config = session.config(self.env, self.key_file())
        if "key" in body:
            problem = check_key_form(body["key"])
            if problem is not None:
                return _not_accepted(None, f"fal API key not tested: {problem}. Copy the whole key from "
                                           "fal.ai > Dashboard > Keys.")
            config = config.with_(key=Secret(body["key"].strip()), key_source="argument")
        if config.key is None:
            return _not_accepted(None, str(MissingKeyError(config.missing_key_hint)))
        try:
            # On the nodes' own loop and connections, like a run.
            await session.engine().call(check_key, session.client(config).transport)
        except HTTPStatusError as exc:
            return _not_accepted(exc.status_code, str(exc))
        except FalError as exc:
            return _not_accepted(None, str(exc))
        return _answer(ok=True, source=config.key_source)

    async def price(self, request):
        from ..fal_core.schema import ENDPOINT
        from . import session

        endpoint_id = request.query.get("endpoint_id", ENDPOINT)
        if not _ENDPOINT_ID.match(endpoint_id):
            return _answer(400, error=f"endpoint_id={endpoint_id[:80]!r}: use an id of the form owner/alias[/path]")
        known = session.price_cache().current(endpoint_id)
        # Answered from what is known: the editor never waits on fal for a price.
        refresh_price_in_background(endpoint_id, self.env, self.key_file)
        if known is None:
            return _answer(404, error=f"no price known for {endpoint_id} yet; asking fal, try again shortly")
        return _answer(**known.to_json())

    async def read_budget(self, request):
        from ..fal_core import spend
        from . import session

        try:
            limit = session.budget(self.env)
            spent = await asyncio.to_thread(spend.spent_today, session.journal())
        except ConfigError as exc:
            return _answer(500, error=str(exc))
        return _answer(daily_budget=limit.daily, source=limit.source, spent_today=spent, currency="USD")

    async def store_budget(self, request):
        from ..fal_core import budget as budgets
        from . import session

        body = await _json_body(request)
        if body is None or "daily_budget" not in body:
            return _answer(400, error='the body must be JSON {"daily_budget": dollars} or {"daily_budget": null}')
        try:
            amount = budgets.parse_amount(body["daily_budget"], "daily_budget")
        except ConfigError as exc:
            return _answer(400, error=str(exc))
        path = session.budget_file()
        try:
            await asyncio.to_thread(budgets.save, path, amount)
        except OSError as exc:
            return _answer(500, error=f"daily budget not saved: cannot write {path}: {exc.strerror}. "
                                      "Check that ComfyUI's user folder is writable.")
        log.info("fal daily budget %s", "cleared" if amount is None else f"set to {amount:.2f} USD")
        return await self.read_budget(request)


def add_routes(routes, key_file: Callable[[], Path] = comfy.key_file,
               env: Mapping[str, str] = os.environ) -> None:
    """Add the routes to an aiohttp ``RouteTableDef`` (ComfyUI's ``PromptServer.routes``).

    Every route goes through :func:`refusal`: this server's own page only.
    """
    handlers = _Handlers(key_file, env)

    def same_origin_only(handler):
        async def guarded(request):
            reason = refusal(request.headers, request.host, env)
            if reason is not None:
                log.warning("fal route %s: refused a request (%s)", request.path, reason)
                return _answer(403, error=f"refused: {reason}; change the fal key from ComfyUI's own page")
            return await handler(request)
        return guarded

    for method, path, handler in (
        (routes.get, ROUTE, handlers.read), (routes.post, ROUTE, handlers.store),
        (routes.delete, ROUTE, handlers.remove), (routes.post, KEY_TEST_ROUTE, handlers.test_key),
        (routes.get, PRICE_ROUTE, handlers.price),
        (routes.get, BUDGET_ROUTE, handlers.read_budget), (routes.post, BUDGET_ROUTE, handlers.store_budget),
    ):
        method(path)(same_origin_only(handler))


_background: set[asyncio.Task] = set()
_refreshing: set[tuple] = set()


def refresh_price_in_background(endpoint_id: str, env: Mapping[str, str] = os.environ,
                                key_file: Callable[[], Path] = comfy.key_file) -> None:
    """Ask fal for the price on the running loop (ComfyUI's server's), when it is over a day old
    or missing and no refresh of it is under way; returns at once."""
    from . import session

    cache = session.price_cache()
    if not cache.needs_refresh(endpoint_id) or (cache.path, endpoint_id) in _refreshing:
        return
    _refreshing.add((cache.path, endpoint_id))

    async def refresh() -> None:
        try:
            transport = session.client(session.config(env, key_file())).transport
            await session.engine().call(cache.refresh, transport, endpoint_id)
        finally:
            _refreshing.discard((cache.path, endpoint_id))

    task = asyncio.get_running_loop().create_task(refresh())
    _background.add(task)  # held, so the task is not collected before it ends
    task.add_done_callback(_background.discard)


async def _refresh_price_at_start(app) -> None:
    # A headless ComfyUI never opens the editor, whose price route would be the only one to ask.
    from ..fal_core.schema import ENDPOINT

    refresh_price_in_background(ENDPOINT)


async def _prepare_at_start(app) -> None:
    from . import session

    session.prepare()


def register() -> None:
    """Add the routes to ComfyUI's server; a no-op outside ComfyUI (tests, other hosts).

    Runs when the pack is imported, before ComfyUI hands its route table to aiohttp.
    """
    server = comfy.server_instance()
    if server is not None:
        add_routes(server.routes)
        app = getattr(server, "app", None)
        if app is not None:
            app.on_startup.append(_refresh_price_at_start)
            app.on_startup.append(_prepare_at_start)
