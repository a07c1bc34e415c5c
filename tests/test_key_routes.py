"""The settings dialog's /fal/key route on a plain aiohttp app, and the nodes reading its file."""

import asyncio
import json
import stat

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from comfyui_fal_sd3.nodes import comfy, session
from comfyui_fal_sd3.nodes.routes import add_routes, cross_origin

KEY = "0d6f1c2e-key-id:9a8b7c6d5e4f3a2b1c0d"


def key_app(env, key_file) -> web.Application:
    table = web.RouteTableDef()
    add_routes(table, key_file=lambda: key_file, env=env)
    app = web.Application()
    app.add_routes(table)
    return app


def call(env, key_file, *requests):
    """Send (method, body, headers) requests to a fresh app; the answers' (status, JSON body)."""
    async def go():
        async with TestClient(TestServer(key_app(env, key_file))) as client:
            answers = []
            for method, body, headers in requests:
                response = await client.request(method, "/fal/key", headers=headers,
                                                **({"json": body} if isinstance(body, dict) else {"data": body}))
                answers.append((response.status, await response.text()))
            return answers
    return [(status, json.loads(text)) for status, text in asyncio.run(go())]


@pytest.fixture
def key_file(tmp_path):
    return tmp_path / "user" / "fal_sd3" / "fal_key"


def test_set_read_back_and_clear(key_file):
    answers = call({}, key_file,
                   ("GET", None, {}),
                   ("POST", {"key": f"  {KEY}\n"}, {}),
                   ("GET", None, {}),
                   ("DELETE", None, {}),
                   ("GET", None, {}))
    assert answers == [
        (200, {"configured": False, "source": None}),
        (200, {"configured": True, "source": "file"}),
        (200, {"configured": True, "source": "file"}),
        (200, {"configured": False, "source": None}),
        (200, {"configured": False, "source": None}),
    ]
    assert not key_file.exists()
    assert KEY.split(":")[1] not in json.dumps(answers)


def test_key_file_is_private_and_outside_the_pack(key_file):
    call({}, key_file, ("POST", {"key": KEY}, {}))
    assert key_file.read_text() == KEY + "\n"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert [p.name for p in key_file.parent.iterdir()] == ["fal_key"]  # no temporary file left


def test_saving_again_replaces_the_key(key_file):
    call({}, key_file, ("POST", {"key": KEY}, {}), ("POST", {"key": "other-id:other-secret"}, {}))
    assert key_file.read_text() == "other-id:other-secret\n"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


@pytest.mark.parametrize("body, message", [
    ({"key": "just-a-secret-without-id"}, "a fal key has the form key_id:key_secret"),
    ({"key": "id:secret with space"}, "a fal key has the form key_id:key_secret"),
    ({"key": "   "}, "the key is empty"),
    ({"key": 12345}, 'the body must be JSON {"key": "key_id:key_secret"}'),
    ("not json", 'the body must be JSON {"key": "key_id:key_secret"}'),
])
def test_a_malformed_key_is_refused_without_echoing_it(key_file, body, message):
    ((status, answer),) = call({}, key_file, ("POST", body, {}))
    assert status == 400 and message in answer["error"]
    if isinstance(body, dict) and isinstance(body["key"], str) and body["key"].strip():
        assert body["key"] not in answer["error"]
    assert not key_file.exists()


def test_the_environment_wins_and_is_reported(key_file):
    env = {"FAL_KEY_ID": "env-id", "FAL_KEY_SECRET": "env-secret"}
    answers = call(env, key_file, ("GET", None, {}), ("POST", {"key": KEY}, {}), ("DELETE", None, {}))
    assert [a for _, a in answers] == [{"configured": True, "source": "env"}] * 3
    assert "env-secret" not in json.dumps(answers)


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"},
    {"Origin": "http://127.0.0.1:9999"},
    {"Origin": "null"},
    {"Sec-Fetch-Site": "cross-site"},
])
def test_requests_from_another_site_are_refused(key_file, headers):
    answers = call({}, key_file, ("POST", {"key": KEY}, headers), ("DELETE", None, headers), ("GET", None, headers))
    assert [status for status, _ in answers] == [403, 403, 403]
    assert all("refused" in answer["error"] for _, answer in answers)
    assert not key_file.exists()


def test_same_origin_requests_are_served(key_file):
    async def go():
        async with TestClient(TestServer(key_app({}, key_file), host="127.0.0.1")) as client:
            origin = f"http://127.0.0.1:{client.port}"
            response = await client.post("/fal/key", json={"key": KEY},
                                         headers={"Origin": origin, "Sec-Fetch-Site": "same-origin"})
            return response.status, await response.json()
    assert asyncio.run(go()) == (200, {"configured": True, "source": "file"})


@pytest.mark.parametrize("origin, host, refused", [
    ("http://localhost:8188", "localhost:8188", False),
    ("http://LOCALHOST:8188", "localhost:8188", False),
    ("https://comfy.example", "comfy.example", False),
    ("https://comfy.example:443", "comfy.example", False),
    ("http://[::1]:8188", "[::1]:8188", False),
    ("http://localhost:8189", "localhost:8188", True),
    ("http://comfy.example.evil", "comfy.example", True),
    ("http://localhost:notaport", "localhost:8188", True),
])
def test_cross_origin_compares_host_and_port(origin, host, refused):
    assert (cross_origin({"Origin": origin}, host) is not None) == refused


def test_the_nodes_use_the_saved_key_unless_the_environment_has_one(monkeypatch, tmp_path):
    monkeypatch.setenv("FAL_SD3_STATE_DIR", str(tmp_path / "state"))
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET"):
        monkeypatch.delenv(name, raising=False)
    call({}, comfy.key_file(), ("POST", {"key": KEY}, {}))
    config = session.config()
    assert config.key.reveal() == KEY and config.key_source == "file"
    monkeypatch.setenv("FAL_KEY", "env-id:env-secret")
    config = session.config()
    assert config.key.reveal() == "env-id:env-secret" and config.key_source == "env"


def test_an_unreadable_key_file_is_reported_by_path(key_file):
    key_file.parent.mkdir(parents=True)
    key_file.mkdir()  # a folder where the file should be: reading it fails
    ((status, answer),) = call({}, key_file, ("GET", None, {}))
    assert status == 500 and str(key_file) in answer["error"]


def test_register_adds_the_route_to_comfyuis_server_and_is_a_no_op_without_it(monkeypatch, tmp_path):
    import sys
    import types

    from comfyui_fal_sd3.nodes.routes import register
    monkeypatch.delitem(sys.modules, "server", raising=False)
    register()  # no ComfyUI: nothing to do, nothing raised
    prompt_server = types.SimpleNamespace(routes=web.RouteTableDef())
    server = types.ModuleType("server")
    server.PromptServer = types.SimpleNamespace(instance=prompt_server)
    monkeypatch.setitem(sys.modules, "server", server)
    register()
    assert sorted((r.method, r.path) for r in prompt_server.routes) == [
        ("DELETE", "/fal/key"), ("GET", "/fal/budget"), ("GET", "/fal/key"), ("GET", "/fal/price"),
        ("POST", "/fal/budget"), ("POST", "/fal/key"), ("POST", "/fal/key/test")]


REBIND = {"Host": "rebind.attacker.example", "Origin": "http://rebind.attacker.example"}


def test_dns_rebinding_cannot_change_or_read_the_key(key_file):
    """A page whose name now points at 127.0.0.1 sends a matching Origin; its Host gives it away."""
    answers = call({}, key_file, ("POST", {"key": KEY}, REBIND), ("GET", None, REBIND))
    assert [status for status, _ in answers] == [403, 403]
    assert "rebind.attacker.example" in answers[0][1]["error"] and "FAL_SD3_ALLOWED_HOSTS" in answers[0][1]["error"]
    assert not key_file.exists()
    call({}, key_file, ("POST", {"key": KEY}, {}))
    ((status, _),) = call({}, key_file, ("DELETE", None, REBIND))
    assert status == 403 and key_file.read_text() == KEY + "\n"


def test_a_host_the_user_allowed_is_served(key_file):
    env = {"FAL_SD3_ALLOWED_HOSTS": " comfy.lan , studio-box:8188"}
    lan = {"Host": "comfy.lan:8188", "Origin": "http://comfy.lan:8188"}
    box = {"Host": "studio-box:8188", "Origin": "http://studio-box:8188"}
    other_port = {"Host": "studio-box:9000", "Origin": "http://studio-box:9000"}
    answers = call(env, key_file, ("POST", {"key": KEY}, lan), ("GET", None, box), ("DELETE", None, other_port))
    assert [status for status, _ in answers] == [200, 200, 403]


@pytest.mark.parametrize("host, trusted", [
    ("127.0.0.1:8188", True), ("127.8.9.10", True), ("localhost:8188", True), ("LOCALHOST", True),
    ("[::1]:8188", True), ("rebind.attacker.example", False), ("localhost.attacker.example", False),
    ("127.0.0.1.attacker.example", False), ("192.168.1.20:8188", False), ("", False), ("[::1", False),
])
def test_untrusted_host(host, trusted):
    from comfyui_fal_sd3.nodes.routes import untrusted_host
    assert (untrusted_host(host, {}) is None) == trusted


def test_every_route_goes_through_the_one_guard(key_file, monkeypatch, tmp_path):
    """Routes added later (the key test, price, budget...) are refused to a rebinding page too."""
    monkeypatch.setenv("FAL_SD3_STATE_DIR", str(tmp_path / "state"))
    table = web.RouteTableDef()
    add_routes(table, key_file=lambda: key_file, env={})
    app = web.Application()
    app.add_routes(table)

    async def go():
        async with TestClient(TestServer(app)) as client:
            return {(r.method, r.path): (await client.request(r.method, r.path, headers=REBIND, json={})).status
                    for r in table}
    statuses = asyncio.run(go())
    assert len(statuses) >= 3 and set(statuses.values()) == {403}, statuses
