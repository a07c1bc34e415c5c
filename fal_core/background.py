"""fal I/O on one long-lived event loop of fal_core's own, for hosts that run each task in a
fresh loop.

ComfyUI runs every prompt in its own ``asyncio.run``: a client bound to that loop dies with the
prompt, and with it its connections, TLS sessions and CDN token, so every run would pay new
handshakes. Here one loop in a daemon thread holds one connection pool for the whole process;
a task on any other loop hands a coroutine to it with :meth:`Background.call` and awaits the
outcome. Cancelling the caller cancels the coroutine there and waits for its cleanup (such as
cancelling the request at fal) before the caller's cancellation goes on.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Coroutine, TypeVar

from .client import FalClient
from .config import FalConfig
from .storage import UploadCache
from .transport import new_pool

T = TypeVar("T")
# One FalClient per configuration (key and URLs) keeps each key's CDN token; a few suffice.
CLIENTS = 8


class Background:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fal_core-background", daemon=True)
        self._thread.start()
        self.pool = new_pool()
        self._clients: OrderedDict[tuple[FalConfig, Path | None], FalClient] = OrderedDict()
        self._lock = threading.Lock()

    def client(self, config: FalConfig, upload_cache: Path | None = None) -> FalClient:
        """The FalClient for ``config`` on the shared pool; the same one while ``config`` is.

        A changed key is a changed configuration: the next run uses it, on the same connections.
        """
        with self._lock:
            key = (config, upload_cache)
            client = self._clients.get(key)
            if client is None:
                client = FalClient(config, pool=self.pool, upload_cache=UploadCache(upload_cache))
                self._clients[key] = client
                while len(self._clients) > CLIENTS:
                    self._clients.popitem(last=False)
            self._clients.move_to_end(key)
            return client

    async def call(self, function: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any) -> T:
        """Run ``function(*args, **kwargs)`` on the background loop; its outcome, here."""
        caller = asyncio.get_running_loop()
        coroutine = function(*args, **kwargs)
        outcome: asyncio.Future[T] = caller.create_future()
        started: list[asyncio.Task] = []

        def settle(task: asyncio.Task) -> None:
            if outcome.done():
                return
            if task.cancelled():
                outcome.cancel()
            elif (error := task.exception()) is not None:
                outcome.set_exception(error)
            else:
                outcome.set_result(task.result())

        def report(task: asyncio.Task) -> None:
            try:
                caller.call_soon_threadsafe(settle, task)
            except RuntimeError:
                pass  # the caller's loop is gone; nobody waits for this outcome

        def start() -> None:
            task: asyncio.Task[T] = self.loop.create_task(coroutine)
            task.add_done_callback(report)
            started.append(task)

        self.loop.call_soon_threadsafe(start)
        try:
            return await asyncio.shield(outcome)
        except asyncio.CancelledError:
            if outcome.done():
                raise
            # Queued after start(), so the task exists when this runs.
            self.loop.call_soon_threadsafe(lambda: started[0].cancel())
            await asyncio.wait([outcome])
            if not outcome.cancelled():
                outcome.exception()  # retrieved: the caller's cancellation is what goes on
            raise

    def soon(self, function: Callable[..., Any], *args: Any) -> None:
        """Call the plain function ``function(*args)`` on the background loop; no waiting."""
        self.loop.call_soon_threadsafe(function, *args)

    def relay(self, callback: Callable[..., None]) -> Callable[..., None]:
        """``callback`` made callable from the background loop: it runs on the caller's loop
        (the one running now), in order, after what the caller has already scheduled."""
        caller = asyncio.get_running_loop()

        def relayed(*args: Any) -> None:
            try:
                caller.call_soon_threadsafe(callback, *args)
            except RuntimeError:
                pass  # the caller's loop has closed: there is nobody left to tell
        return relayed

    def close(self) -> None:
        """Close the pool's connections and stop the loop."""
        if not self.loop.is_running():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.pool.aclose(), self.loop).result(5)
        except Exception:
            pass  # exiting: an unclean close costs the server a dangling connection at most
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


_shared: Background | None = None
_shared_lock = threading.Lock()


def shared() -> Background:
    """The process's background loop and pool, started on first use and closed at exit."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Background()
            atexit.register(_shared.close)
        return _shared
