"""FalClient: one configuration, one connection pool, and the services built on them."""

from __future__ import annotations

from typing import Any

import httpx

from .config import FalConfig
from .connections import Pool
from .history import History
from .queue import QueueClient
from .retry import DEFAULT_RETRY, RetryPolicy
from .storage import Storage, UploadCache
from .transport import DEFAULT_TIMEOUT, Transport


class FalClient:
    """The async entry point to fal.

    ``client.queue`` submits and follows requests, ``client.storage`` uploads files,
    ``client.history`` reads the key's own request history (fal's Platform API), and
    ``fal_core.img2img`` runs the whole image-to-image job on a client. Use it as an async
    context manager so its connections are closed::

        async with FalClient() as fal:
            completion = await fal.queue.subscribe(app_id, payload)

    Configuration comes from the environment (see FalConfig.from_env) unless ``config`` is
    given; keyword overrides such as ``key=`` or ``queue_url=`` win over both. A ``pool`` (see
    ``transport.new_pool``) is shared, not closed; without one the client has its own.
    """

    def __init__(
        self,
        config: FalConfig | None = None,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        upload_cache: UploadCache | None = None,
        poll_interval: float = 0.2,
        pool: Pool | None = None,
        **config_overrides: Any,
    ) -> None:
        if config is None:
            config = FalConfig.from_env(**config_overrides)
        elif config_overrides:
            config = config.with_(**config_overrides)
        self.config = config
        self.transport = Transport(config, retry=retry, timeout=timeout, pool=pool)
        self.queue = QueueClient(self.transport, poll_interval=poll_interval)
        self.storage = Storage(self.transport, upload_cache)
        self.history = History(self.transport)

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def __aenter__(self) -> "FalClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        key = "set" if self.config.key is not None else "missing"
        return f"FalClient(queue_url={self.config.queue_url!r}, key={key})"
