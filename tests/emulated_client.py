"""A FalClient pointed at a test's FalEmulator, with retries short enough for a test."""

from comfyui_fal_sd3.fal_core import FalClient, RetryPolicy

FAST = RetryPolicy(attempts=3, base=0.01, cap=0.02)


def emulated_client(emu, **kwargs) -> FalClient:
    """Every fal URL on the emulator, its key, FAST retries; ``kwargs`` override or add."""
    options = dict(key=emu.key, queue_url=emu.queue_url, rest_url=emu.rest_url, cdn_url=emu.cdn_url,
                   api_url=emu.api_url, retry=FAST)
    return FalClient(**{**options, **kwargs})
