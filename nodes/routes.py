"""The settings dialog's route for the fal key, on ComfyUI's server.

``POST /fal/key`` with ``{"key": "key_id:key_secret"}`` saves it in the key file,
``GET /fal/key`` says whether a key is set and where it comes from (never the key),
``DELETE /fal/key`` removes the file. The key never becomes a ComfyUI setting: those are served
to anyone who reaches the server by ``GET /settings``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import urlsplit

from ..fal_core.config import check_key_form
from ..fal_core.errors import ConfigError
from . import comfy, key_store

ROUTE = "/fal/key"
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


def add_routes(routes, key_file: Callable[[], Path] = comfy.key_file,
               env: Mapping[str, str] = os.environ) -> None:
    """Add the key route to an aiohttp ``RouteTableDef`` (ComfyUI's ``PromptServer.routes``).

    ``key_file`` is called on every request: the state folder can move with the environment.
    """
    from aiohttp import web  # only ever called inside ComfyUI or tests, which have aiohttp

    def answer(status: int = 200, **body) -> web.Response:
        return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})

    def current() -> web.Response:
        try:
            return answer(**key_store.status(key_file(), env))
        except ConfigError as exc:
            return answer(500, error=str(exc))

    def same_origin_only(handler):
        async def guarded(request: web.Request) -> web.Response:
            reason = cross_origin(request.headers, request.host)
            if reason is not None:
                log.warning("fal key route: refused a request from another site (%s)", reason)
                return answer(403, error=f"refused: {reason}; change the fal key from ComfyUI's own page")
            return await handler(request)
        return guarded

    @routes.get(ROUTE)
    @same_origin_only
    async def read(request: web.Request) -> web.Response:
        return current()

    @routes.post(ROUTE)
    @same_origin_only
    async def store(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        key = body.get("key") if isinstance(body, dict) else None
        if not isinstance(key, str):
            return answer(400, error='the body must be JSON {"key": "key_id:key_secret"}')
        problem = check_key_form(key)
        if problem is not None:
            return answer(400, error=f"fal API key not saved: {problem}. Copy the whole key from "
                                     "fal.ai > Dashboard > Keys.")
        path = key_file()
        try:
            # fsync can take a while on a busy disk, and the event loop also carries the websocket.
            await asyncio.to_thread(key_store.save, path, key.strip())
        except OSError as exc:
            return answer(500, error=f"fal API key not saved: cannot write {path}: {exc.strerror}. "
                                     "Check that ComfyUI's user folder is writable.")
        log.info("fal key saved to %s", path)
        return current()

    @routes.delete(ROUTE)
    @same_origin_only
    async def remove(request: web.Request) -> web.Response:
        path = key_file()
        try:
            await asyncio.to_thread(key_store.clear, path)
        except OSError as exc:
            return answer(500, error=f"fal API key not cleared: cannot remove {path}: {exc.strerror}.")
        log.info("fal key file %s removed", path)
        return current()


def register() -> None:
    """Add the routes to ComfyUI's server; a no-op outside ComfyUI (tests, other hosts).

    Runs when the pack is imported, before ComfyUI hands its route table to aiohttp.
    """
    server = comfy.server_instance()
    if server is not None:
        add_routes(server.routes)
