"""The unit price from fal's pricing API, kept a day, with the published price as the fallback."""

import asyncio
import json
import time

import pytest

from comfyui_fal_sd3.fal_core.client import FalClient
from comfyui_fal_sd3.fal_core.pricing import PriceCache
from comfyui_fal_sd3.fal_core.retry import RetryPolicy
from comfyui_fal_sd3.fal_core.schema import ENDPOINT

FAST = RetryPolicy(attempts=2, base=0.01, cap=0.02)


def refresh(emu, cache, key=None):
    async def go():
        async with FalClient(key=key or emu.key, api_url=emu.api_url, queue_url=emu.queue_url,
                             rest_url=emu.rest_url, retry=FAST) as fal:
            return await cache.refresh(fal.transport)
    return asyncio.run(go())


def test_without_an_answer_the_published_price_is_used_and_marked(tmp_path):
    price = PriceCache(tmp_path / "prices.json").current()
    assert (price.unit_price, price.unit, price.currency, price.source) == (0.035, "image", "USD", "published")
    assert "published" in price.note and "not asked yet" in price.note
    assert PriceCache(tmp_path / "prices.json").needs_refresh()


def test_fals_price_is_fetched_kept_a_day_and_read_by_another_process(fal_emulator, tmp_path):
    cache = PriceCache(tmp_path / "prices.json")
    price = refresh(fal_emulator, cache)
    assert (price.unit_price, price.unit, price.currency, price.source) == (0.04, "image", "USD", "fal")
    (call,) = fal_emulator.calls("pricing")
    assert call.query == {"endpoint_id": ENDPOINT} and call.headers["authorization"] == f"Key {fal_emulator.key}"
    assert not cache.needs_refresh()
    other = PriceCache(tmp_path / "prices.json")  # a restart, or a second ComfyUI
    assert other.current().source == "fal" and not other.needs_refresh()
    later = time.time() + 25 * 3600
    assert other.current(now=later).source == "cache" and other.current(now=later).unit_price == 0.04
    assert other.needs_refresh(now=later)
    assert fal_emulator.key not in (tmp_path / "prices.json").read_text()


@pytest.mark.parametrize("fault, reason", [
    ({"status": 401}, "fal refused the key (HTTP 401)"),
    ({"status": 403, "body": {"detail": "forbidden"}}, "this key may not read fal's prices (HTTP 403)"),
    ({"status": 503, "times": 2}, "fal answered HTTP 503"),
    ({"status": 200, "body": {"prices": "none"}}, "no 'prices' list"),
    ({"status": 200, "body": {"prices": [{"endpoint_id": ENDPOINT, "unit_price": "cheap", "unit": "image",
                                          "currency": "USD"}]}}, "is not a price"),
    ({"status": 200, "body": {"prices": [{"endpoint_id": ENDPOINT, "unit_price": -1, "unit": "image",
                                          "currency": "USD"}]}}, "is not a price"),
    ({"status": 200, "body": {"prices": []}}, "has no price for"),
    ({"status": 200, "body": "<html>maintenance</html>"}, "is not JSON"),
    ({"status": 200, "body": "x" * (2 << 20)}, "over the limit"),
    ({"drop": "before", "times": 2}, "failed after 2 attempts"),
])
def test_a_failed_refresh_keeps_the_fallback_says_why_and_waits_before_asking_again(fal_emulator, tmp_path,
                                                                                     fault, reason):
    fal_emulator.fault("pricing", **fault)
    cache = PriceCache(tmp_path / "prices.json")
    price = refresh(fal_emulator, cache)
    assert (price.unit_price, price.source) == (0.035, "published")
    assert reason in price.note, price.note
    assert not cache.needs_refresh()  # not asked on every render
    assert cache.needs_refresh(now=time.time() + 3601)
    assert fal_emulator.key not in price.note


def test_a_key_without_pricing_access(fal_emulator, tmp_path):
    fal_emulator.pricing_access = False
    price = refresh(fal_emulator, PriceCache(tmp_path / "prices.json"))
    assert price.source == "published" and "HTTP 403" in price.note


def test_a_stale_price_stays_when_the_refresh_fails(fal_emulator, tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"prices": {ENDPOINT: {"unit_price": 0.05, "unit": "image", "currency": "USD",
                                                      "fetched_at": time.time() - 3 * 86400}}, "failures": {}}))
    cache = PriceCache(path)
    assert cache.current().source == "cache" and cache.needs_refresh()
    fal_emulator.fault("pricing", status=500, times=2)
    price = refresh(fal_emulator, cache)
    assert (price.unit_price, price.source) == (0.05, "cache") and "HTTP 500" in price.note


def test_a_damaged_cache_file_means_the_published_price(tmp_path):
    path = tmp_path / "prices.json"
    for text in ("{not json", json.dumps([1, 2]),
                 json.dumps({"prices": {ENDPOINT: {"unit_price": "x"}}, "failures": {}})):
        path.write_text(text)
        assert PriceCache(path).current().source == "published"


def test_an_unwritable_state_folder_keeps_fals_price_in_memory(fal_emulator, tmp_path):
    blocker = tmp_path / "state"
    blocker.write_text("a file where the folder should be")
    cache = PriceCache(blocker / "prices.json")
    price = refresh(fal_emulator, cache)
    assert (price.unit_price, price.source) == (0.04, "fal")


def test_cost_is_per_image():
    price = PriceCache("/nonexistent/prices.json").current()
    assert price.cost(6) == pytest.approx(0.21)
