"""A blocking face over the async API, for scripts and notebooks.

The logic exists once, async. ``SyncFalClient`` runs a FalClient on a private event loop in a
worker thread and turns each coroutine method (also those of ``.queue`` and ``.storage``) into a
blocking call; async iterators become plain iterators. Ctrl-C while waiting cancels the
coroutine, which cancels the fal request too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import threading
from typing import Any, Awaitable, Callable, TypeVar

from .client import FalClient
from .queue import QueueClient
from .storage import Storage

T = TypeVar("T")
_PROXIED = (QueueClient, Storage)


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fal_core-sync", daemon=True)
        self.thread.start()

    def run(self, awaitable: Awaitable[T]) -> T:
        future = asyncio.run_coroutine_threadsafe(_awaited(awaitable), self.loop)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            try:
                future.result(timeout=10)
            except (concurrent.futures.CancelledError, Exception):
                pass
            raise

    def iterate(self, iterator: Any):
        while True:
            try:
                yield self.run(iterator.__anext__())
            except StopAsyncIteration:
                return

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


class _Proxy:
    """Blocking versions of an async object's methods."""

    def __init__(self, target: Any, loop: _Loop) -> None:
        self._target = target
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if isinstance(value, _PROXIED):
            return _Proxy(value, self._loop)
        if inspect.iscoroutinefunction(value):
            return self._blocking(value)
        if inspect.isasyncgenfunction(value):
            return functools.wraps(value)(lambda *a, **k: self._loop.iterate(value(*a, **k)))
        return value

    def _blocking(self, method: Callable[..., Awaitable[T]]) -> Callable[..., T]:
        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> T:
            return self._loop.run(method(*args, **kwargs))
        return call

    def __repr__(self) -> str:
        return f"Sync{self._target!r}"


class SyncFalClient(_Proxy):
    """FalClient with blocking methods. Close it (or use ``with``) to stop its thread.

    ``run(coroutine_function, *args)`` runs any async fal_core function on this client, for
    example ``sync.run(fal_core.img2img, image, params)``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        loop = _Loop()

        async def create() -> FalClient:
            # The httpx client must be created on the loop that will use it.
            return FalClient(*args, **kwargs)

        super().__init__(loop.run(create()), loop)

    def run(self, function: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        return self._loop.run(function(self._target, *args, **kwargs))

    def close(self) -> None:
        self._loop.run(self._target.aclose())
        self._loop.close()

    def __enter__(self) -> "SyncFalClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
