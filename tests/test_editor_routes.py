"""The editor's routes on a plain aiohttp app: key test, price and budget, against the emulator."""

import asyncio
import json
import logging
import time

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from comfyui_fal_sd3.fal_core.schema import ENDPOINT
from comfyui_fal_sd3.nodes import comfy, session
from comfyui_fal_sd3.nodes.routes import add_routes


@pytest.fixture
def state(monkeypatch, tmp_path):
    monkeypatch.setenv("FAL_SD3_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("FAL_JOURNAL", raising=False)
    session._price_caches.clear()
    return tmp_path / "state"


def app(env) -> web.Application:
    table = web.RouteTableDef()
    add_routes(table, key_file=comfy.key_file, env=env)
    application = web.Application()
    application.add_routes(table)
    return application


def call(env, *requests, pause=0.0):
    """Send (method, path, body, headers) requests; the answers' (status, JSON body, seconds)."""
    async def go():
        async with TestClient(TestServer(app(env))) as client:
            answers = []
            for method, path, body, headers in requests:
                started = time.monotonic()
                response = await client.request(method, path, headers=headers or {},
                                                **({} if body is None else {"json": body}))
                answers.append((response.status, json.loads(await response.text()), time.monotonic() - started))
                await asyncio.sleep(pause)
            return answers
    return asyncio.run(go())


def without_key(emu):
    return {k: v for k, v in emu.env().items() if k != "FAL_KEY"}


# --- POST /fal/key/test -------------------------------------------------------------------------

def test_key_test_of_the_key_the_next_run_uses(fal_emulator, state, caplog):
    caplog.set_level(logging.DEBUG)
    ((status, body, _),) = call(fal_emulator.env(), ("POST", "/fal/key/test", {}, None))
    assert (status, body) == (200, {"ok": True, "source": "env"})
    (token,) = fal_emulator.calls("token")
    assert token.headers["authorization"] == f"Key {fal_emulator.key}"
    assert fal_emulator.count("submit") == 0  # no job, nothing paid
    assert "test-key-secret" not in caplog.text


def test_key_test_of_the_saved_key_and_of_a_refused_one(fal_emulator, state):
    env = without_key(fal_emulator)
    comfy.key_file().parent.mkdir(parents=True)
    comfy.key_file().write_text(fal_emulator.key + "\n")
    ((_, body, _),) = call(env, ("POST", "/fal/key/test", {}, None))
    assert body == {"ok": True, "source": "file"}
    comfy.key_file().write_text("saved-id:saved-but-revoked-secret\n")
    ((_, body, _),) = call(env, ("POST", "/fal/key/test", {}, None))
    assert body["ok"] is False and body["status"] == 401
    assert "ComfyUI's settings dialog" in body["message"] and "enter a valid key" in body["message"]
    assert "saved-but-revoked-secret" not in json.dumps(body)


def test_a_refused_key_from_the_environment_says_so(fal_emulator, state):
    env = {**fal_emulator.env(), "FAL_KEY": "env-id:env-wrong-secret"}
    ((_, body, _),) = call(env, ("POST", "/fal/key/test", {}, None))
    assert body["ok"] is False and body["status"] == 401
    assert "from the environment" in body["message"] and "set FAL_KEY" in body["message"]
    assert "env-wrong-secret" not in body["message"]


def test_key_test_of_a_key_not_saved_yet(fal_emulator, state):
    env = without_key(fal_emulator)
    answers = call(env, ("POST", "/fal/key/test", {"key": f" {fal_emulator.key} "}, None),
                   ("POST", "/fal/key/test", {"key": "typed-id:typed-wrong-secret"}, None),
                   ("POST", "/fal/key/test", {"key": "no-colon"}, None))
    assert [b for _, b, _ in answers][0] == {"ok": True, "source": "argument"}
    refused, malformed = answers[1][1], answers[2][1]
    assert refused["ok"] is False and refused["status"] == 401 and "typed-wrong-secret" not in refused["message"]
    assert malformed == {"ok": False, "status": None, "message": malformed["message"]}
    assert "key_id:key_secret" in malformed["message"] and "no-colon" not in malformed["message"]
    assert fal_emulator.count("token") == 2  # the malformed key never left the machine
    assert not comfy.key_file().exists()  # testing saves nothing


def test_key_test_without_any_key_and_with_fal_unreachable(fal_emulator, state):
    ((_, body, _),) = call(without_key(fal_emulator), ("POST", "/fal/key/test", {}, None))
    assert body["ok"] is False and body["status"] is None and "FAL_KEY" in body["message"]
    assert "Settings > fal" in body["message"]
    env = {**fal_emulator.env(), "FAL_REST_URL": "http://127.0.0.1:9/rest"}
    ((_, body, _),) = call(env, ("POST", "/fal/key/test", {}, None))
    assert body["ok"] is False and body["status"] is None and "key check failed" in body["message"]
    fal_emulator.fault("token", status=500, times=2)
    ((_, body, _),) = call(fal_emulator.env(), ("POST", "/fal/key/test", {}, None))
    assert body == {"ok": False, "status": 500, "message": body["message"]}


def test_key_test_refuses_bad_bodies_and_other_sites(fal_emulator, state):
    answers = call(fal_emulator.env(), ("POST", "/fal/key/test", {"key": 5}, None),
                   ("POST", "/fal/key/test", {}, {"Origin": "http://evil.example"}))
    assert [s for s, _, _ in answers] == [400, 403]
    assert fal_emulator.count("token") == 0


# --- GET /fal/price -------------------------------------------------------------------------------

def test_price_answers_at_once_and_refreshes_in_the_background(fal_emulator, state):
    fal_emulator.fault("pricing", delay=1.0)  # a slow Platform API
    first, = call(fal_emulator.env(), ("GET", "/fal/price", None, None), pause=1.5)
    status, body, seconds = first
    assert status == 200 and seconds < 0.5
    assert body == {"endpoint_id": ENDPOINT, "unit_price": 0.035, "unit": "image", "currency": "USD",
                    "source": "published", "note": body["note"]}
    ((_, body, _),) = call(fal_emulator.env(), ("GET", "/fal/price", None, None))
    assert (body["unit_price"], body["source"]) == (0.04, "fal")
    assert fal_emulator.count("pricing") == 1  # kept: not asked again within the day
    assert json.loads((state / "prices.json").read_text())["prices"][ENDPOINT]["unit_price"] == 0.04


def test_price_with_a_key_that_may_not_read_prices(fal_emulator, state):
    fal_emulator.pricing_access = False
    call(fal_emulator.env(), ("GET", "/fal/price", None, None), pause=0.3)
    answers = call(fal_emulator.env(), ("GET", "/fal/price", None, None), ("GET", "/fal/price", None, None))
    assert all(b["source"] == "published" and "HTTP 403" in b["note"] for _, b, _ in answers)
    assert fal_emulator.count("pricing") == 1  # the refusal is remembered for an hour


def test_saving_a_key_asks_for_the_price_again(fal_emulator, state):
    env = without_key(fal_emulator)
    call(env, ("GET", "/fal/price", None, None), pause=0.3)
    assert fal_emulator.count("pricing") == 0  # no key, nothing sent
    call(env, ("POST", "/fal/key", {"key": fal_emulator.key}, None), ("GET", "/fal/price", None, None), pause=0.3)
    ((_, body, _),) = call(env, ("GET", "/fal/price", None, None))
    assert body["source"] == "fal" and fal_emulator.count("pricing") == 1


def test_price_of_an_unknown_endpoint_and_a_bad_id(fal_emulator, state):
    answers = call(fal_emulator.env(), ("GET", "/fal/price?endpoint_id=someone/else", None, None),
                   ("GET", "/fal/price?endpoint_id=../../etc", None, None))
    assert [s for s, _, _ in answers] == [404, 400]


# --- /fal/budget ----------------------------------------------------------------------------------

def test_budget_set_read_and_cleared(state):
    answers = call({}, ("GET", "/fal/budget", None, None),
                   ("POST", "/fal/budget", {"daily_budget": 2.5}, None),
                   ("GET", "/fal/budget", None, None),
                   ("POST", "/fal/budget", {"daily_budget": None}, None))
    assert [b for _, b, _ in answers] == [
        {"daily_budget": None, "source": None, "spent_today": 0.0, "currency": "USD"},
        {"daily_budget": 2.5, "source": "file", "spent_today": 0.0, "currency": "USD"},
        {"daily_budget": 2.5, "source": "file", "spent_today": 0.0, "currency": "USD"},
        {"daily_budget": None, "source": None, "spent_today": 0.0, "currency": "USD"},
    ]
    assert not session.budget_file().exists()


def test_the_environments_budget_wins(state):
    answers = call({"FAL_SD3_DAILY_BUDGET": "1"}, ("POST", "/fal/budget", {"daily_budget": 9}, None))
    assert answers[0][1]["daily_budget"] == 1.0 and answers[0][1]["source"] == "env"


@pytest.mark.parametrize("body", [{"daily_budget": -1}, {"daily_budget": "lots"}, {"daily_budget": True},
                                  {}, {"daily_budget": float("inf")}])
def test_a_bad_budget_is_refused(state, body):
    ((status, answer, _),) = call({}, ("POST", "/fal/budget", body, None))
    assert status == 400 and "daily_budget" in answer["error"]
    assert not session.budget_file().exists()


def test_budget_refuses_other_sites(state):
    ((status, _, _),) = call({}, ("POST", "/fal/budget", {"daily_budget": 100}, {"Origin": "http://evil.example"}))
    assert status == 403 and not session.budget_file().exists()


def test_a_hostile_fal_echoing_the_key_gets_it_into_no_answer_and_no_file(fal_emulator, state, caplog):
    caplog.set_level(logging.DEBUG)
    fal_emulator.echo_key = True
    answers = call(without_key(fal_emulator),
                   ("POST", "/fal/key/test", {"key": "typed-id:typed-echoed-secret"}, None),
                   ("POST", "/fal/key/test", {"key": fal_emulator.key}, None),
                   ("GET", "/fal/price", None, None), pause=0.3)
    answers += call(fal_emulator.env(), ("GET", "/fal/price", None, None))
    assert answers[0][1]["ok"] is False and answers[1][1] == {"ok": True, "source": "argument"}
    stored = (state / "prices.json").read_text()
    for secret in ("typed-echoed-secret", "test-key-secret"):
        assert secret not in json.dumps([b for _, b, _ in answers]) + stored + caplog.text


def test_comfyuis_start_asks_fal_for_the_price_in_the_background(fal_env, state, monkeypatch):
    import sys
    import types

    from comfyui_fal_sd3.nodes.routes import register
    application = web.Application()
    server = types.ModuleType("server")
    server.PromptServer = types.SimpleNamespace(instance=types.SimpleNamespace(routes=web.RouteTableDef(),
                                                                               app=application))
    monkeypatch.setitem(sys.modules, "server", server)
    register()

    async def start():
        async with TestServer(application):  # runs the app's start-up hooks, as ComfyUI's server does
            for _ in range(100):
                if session.price_cache().current().source == "fal":
                    break
                await asyncio.sleep(0.02)
    asyncio.run(start())
    assert session.price_cache().current().unit_price == 0.04 and fal_env.count("pricing") == 1


def test_an_unwritable_state_folder_or_a_damaged_budget_file_is_said_by_path(state):
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text("a file where the state folder should be")
    ((status, body, _),) = call({}, ("POST", "/fal/budget", {"daily_budget": 3}, None))
    assert status == 500 and "budget.json" in body["error"] and "writable" in body["error"]
    state.unlink()
    state.mkdir()
    session.budget_file().write_text("{torn")
    ((status, body, _),) = call({}, ("GET", "/fal/budget", None, None))
    assert status == 500 and str(session.budget_file()) in body["error"]
