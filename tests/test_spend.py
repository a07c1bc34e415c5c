"""What was paid, counted from the journal, and the daily budget that refuses a run before it is sent."""

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from comfyui_fal_sd3.fal_core import spend
from comfyui_fal_sd3.fal_core.budget import BudgetExceeded
from comfyui_fal_sd3.fal_core.journal import Journal
from comfyui_fal_sd3.nodes import session
from comfyui_fal_sd3.nodes.fal_img2img import FalSD3Img2Img

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = dict(prompt="a harbour", negative_prompt="", prompt_expansion=False, num_inference_steps=28, seed=1,
                guidance_scale=5.0, num_images=1, enable_safety_checker=True, strength=0.9, sync_mode=False)


def pictures(n):
    rng = np.random.default_rng(n)
    return torch.from_numpy(rng.integers(0, 256, (n, 64, 72, 3), dtype=np.uint8)).float() / 255.0


def run(**kwargs):
    return asyncio.run(FalSD3Img2Img().run(**{**DEFAULTS, **kwargs}))


@pytest.fixture
def node_env(fal_env, monkeypatch):
    monkeypatch.delenv("FAL_JOURNAL", raising=False)
    monkeypatch.delenv("FAL_SD3_DAILY_BUDGET", raising=False)
    session._price_caches.clear()
    return fal_env


def test_each_accepted_submit_is_paid_once_and_a_reused_result_costs_nothing(node_env):
    run(image=pictures(2), num_images=3)          # 2 requests x 3 images at the published $0.035
    run(image=pictures(2), num_images=3)          # the same requests: reused from the journal
    run(image=pictures(1), num_images=1, seed=9)  # 1 request x 1 image
    assert node_env.count("submit") == 3
    today, week, month = spend.totals(session.journal())
    assert today.requests == week.requests == month.requests == 3
    assert today.amount == pytest.approx(7 * 0.035) and today.currency == "USD" and today.unpriced == 0


def test_the_price_fal_gave_is_what_the_journal_records(node_env):
    cache = session.price_cache()
    async def refresh():
        await session.engine().call(cache.refresh, session.client().transport)
    asyncio.run(refresh())
    run(image=pictures(1), num_images=2)
    (record,) = [r for r in session.journal().records() if "cost" in r]
    assert record["cost"] == {"amount": 0.08, "currency": "USD", "source": "fal"}


def test_a_run_that_would_pass_the_daily_budget_is_refused_before_anything_is_sent(node_env, monkeypatch):
    monkeypatch.setenv("FAL_SD3_DAILY_BUDGET", "0.105")
    run(image=pictures(2))                        # 0.070 of 0.105
    calls = len(node_env.calls())
    with pytest.raises(BudgetExceeded) as info:
        run(image=pictures(1), num_images=2, seed=5)  # 0.070 more would pass it
    message = str(info.value)
    assert "this run would cost 0.070 USD, 0.070 USD is spent today and the limit is 0.105 USD" in message
    assert "FAL_SD3_DAILY_BUDGET" in message and "nothing was sent" in message
    assert len(node_env.calls()) == calls         # no upload, no submit
    run(image=pictures(1), seed=5)                # 0.035 more reaches the limit, not past it
    assert node_env.count("submit") == 3


def test_the_settings_budget_applies_and_names_where_it_is_set(node_env):
    session.budget_file().parent.mkdir(parents=True, exist_ok=True)
    session.budget_file().write_text(json.dumps({"daily_budget": 0}))
    with pytest.raises(BudgetExceeded, match=r"set in ComfyUI's settings \(Settings > fal\)"):
        run(image=pictures(1))
    assert node_env.calls() == []


def record(book, fp, rid, when, amount=0.035, state="pending"):
    book.path.parent.mkdir(parents=True, exist_ok=True)
    line = {"fingerprint": fp, "state": state, "time": when, "request_id": rid}
    if amount is not None:
        line["cost"] = {"amount": amount, "currency": "USD", "source": "published"}
    with open(book.path, "a") as f:
        f.write(json.dumps(line) + "\n")


def test_totals_today_7_and_30_days_and_prune_keeps_what_was_paid(tmp_path):
    book = Journal(tmp_path / "journal.jsonl")
    now = time.time()
    midnight = spend.day_start(0, now)
    record(book, "a", "r1", now - 60)
    record(book, "a", "r1", now - 50, amount=None, state="completed")
    record(book, "b", "r2", spend.day_start(3, now) + 10, amount=0.07)
    record(book, "c", "r3", spend.day_start(20, now) + 10, amount=0.14)
    record(book, "d", "r4", spend.day_start(40, now) + 10, amount=5.0)   # past 30 days
    record(book, "e", "r5", spend.day_start(2, now) + 10, amount=None)   # journaled before prices were
    rows = spend.totals(book, now)
    assert [(r.period, r.requests, r.amount) for r in rows] == [
        ("today", 1, pytest.approx(0.035)), ("7 days", 3, pytest.approx(0.105)), ("30 days", 4, pytest.approx(0.245))]
    assert rows[0].since == midnight and rows[2].unpriced == 1
    book.prune()
    kept = book.records()
    assert {r["request_id"] for r in kept} == {"r1", "r2", "r3"}
    assert all(set(r) <= {"fingerprint", "state", "time", "request_id", "cost", "app_id"}
               for r in kept if r["request_id"] != "r1")
    assert [e.request_id for e in book.entries()] == ["r1"]  # the kept costs are no reusable requests
    assert [(r.requests, r.amount) for r in spend.totals(book, now)][1:] == [
        (2, pytest.approx(0.105)), (3, pytest.approx(0.245))]
    assert book.prune() == 0


def test_cli_journal_spend(tmp_path):
    book = Journal(tmp_path / "journal.jsonl")
    record(book, "a", "r1", time.time() - 60, amount=0.07)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAL_")}
    env["FAL_JOURNAL"] = str(book.path)
    out = subprocess.run([sys.executable, "-m", "fal_core", "journal", "--spend"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["period", "since", "requests", "spent"]
    assert lines[1].split()[0] == "today" and lines[1].split()[-3:] == ["1", "0.070", "USD"]
    assert lines[3].split()[:2] == ["30", "days"] and lines[3].split()[-2:] == ["0.070", "USD"]


def test_the_budget_route_reports_todays_spend(node_env):
    from test_editor_routes import call
    run(image=pictures(2))
    ((status, body, _),) = call({}, ("GET", "/fal/budget", None, None))
    assert status == 200 and body["spent_today"] == pytest.approx(0.07) and body["daily_budget"] is None



def test_a_damaged_budget_file_stops_the_run_before_anything_is_sent(node_env):
    from comfyui_fal_sd3.fal_core.errors import ConfigError
    session.budget_file().parent.mkdir(parents=True, exist_ok=True)
    session.budget_file().write_text('{"daily_budget": "lots"}')
    with pytest.raises(ConfigError, match="daily_budget in .*budget.json='lots'"):
        run(image=pictures(1))
    assert node_env.calls() == []
