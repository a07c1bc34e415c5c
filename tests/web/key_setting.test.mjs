import assert from "node:assert/strict";
import { test } from "node:test";

import { KEY_ROUTE, KEY_TEST_ROUTE, KeyClient, describeKey } from "../../web/lib/key_setting.js";

const KEY = "key-id:key-secret-123456";

// A stand-in for the pack's /fal/key route that behaves as nodes/routes.py does.
function fakeServer({ env = false } = {}) {
  let saved = null;
  const state = () => ({ configured: env || saved !== null, source: env ? "env" : saved !== null ? "file" : null });
  const reply = (status, body) => ({ ok: status < 400, status, json: async () => body });
  const server = async (route, options) => {
    assert.equal(route, KEY_ROUTE);
    if (options.method === "POST") {
      const { key } = JSON.parse(options.body);
      if (!key.includes(":")) return reply(400, { error: "fal API key not saved: a fal key has the form key_id:key_secret" });
      saved = key;
    } else if (options.method === "DELETE") {
      saved = null;
    }
    return reply(200, state());
  };
  server.saved = () => saved;
  return server;
}

test("save, read back and clear, with what the dialog says each time", async () => {
  const server = fakeServer();
  const client = new KeyClient(server);
  assert.deepEqual(await client.status(), { message: describeKey({ configured: false, source: null }), isError: false });
  const saved = await client.save(KEY);
  assert.equal(saved.isError, false);
  assert.match(saved.message, /^Saved\. A key is saved/);
  assert.equal(server.saved(), KEY);
  assert.ok(!saved.message.includes("key-secret"));
  const cleared = await client.clear();
  assert.match(cleared.message, /^Cleared\. No key set/);
  assert.equal(server.saved(), null);
});

test("the server's refusal is shown as an error", async () => {
  const server = fakeServer();
  const answer = await new KeyClient(server).save("no-colon-here");
  assert.deepEqual(answer, { message: "fal API key not saved: a fal key has the form key_id:key_secret", isError: true });
  assert.equal(server.saved(), null);
});

test("an empty field is not sent", async () => {
  const server = fakeServer();
  const answer = await new KeyClient(server).save("   ");
  assert.equal(answer.isError, true);
  assert.match(answer.message, /field is empty/);
});

test("a key from the environment is reported as winning", async () => {
  const answer = await new KeyClient(fakeServer({ env: true })).status();
  assert.match(answer.message, /FAL_KEY in ComfyUI's environment; it wins/);
});

test("an unreachable server or a route that is missing is an error, not a crash", async () => {
  const down = new KeyClient(async () => { throw new TypeError("Failed to fetch"); });
  assert.deepEqual(await down.status(), { message: "Cannot reach ComfyUI (Failed to fetch); is it still running?", isError: true });
  const missing = new KeyClient(async () => ({ ok: false, status: 404, json: async () => { throw new SyntaxError("not JSON"); } }));
  assert.deepEqual(await missing.status(), { message: "ComfyUI answered HTTP 404 without a reason", isError: true });
});

// A stand-in for POST /fal/key/test as its contract says: {} tests the key in use, {key} a key not saved yet.
function testRoute({ saved = null, env = null } = {}) {
  const sent = [];
  const route = async (path, options) => {
    assert.equal(path, KEY_TEST_ROUTE);
    assert.equal(options.method, "POST");
    const body = JSON.parse(options.body);
    sent.push(body);
    const reply = (status, answer) => ({ ok: status < 400, status, json: async () => answer });
    const [key, source] = body.key ? [body.key, "argument"] : env ? [env, "env"] : [saved, "file"];
    if (key === null) return reply(200, { ok: false, status: null, message: "No fal key: set FAL_KEY or save one here." });
    if (key !== KEY) return reply(200, { ok: false, status: 401, message: "fal refused the key from this field." });
    return reply(200, { ok: true, source });
  };
  route.sent = sent;
  return route;
}

test("Test asks fal about the field's key, or the key in use when the field is empty", async () => {
  const route = testRoute({ saved: KEY });
  const client = new KeyClient(route);
  assert.deepEqual(await client.test(""), { message: "fal accepted the saved key.", isError: false });
  assert.deepEqual(await client.test(`  ${KEY} `), { message: "fal accepted the key in the field (not saved yet).", isError: false });
  assert.deepEqual(route.sent, [{}, { key: KEY }]);
  const env = await new KeyClient(testRoute({ env: KEY })).test("");
  assert.match(env.message, /FAL_KEY in ComfyUI's environment/);
});

test("a refused key and a missing key are errors that say what fal answered", async () => {
  const refused = await new KeyClient(testRoute()).test("id:wrong");
  assert.deepEqual(refused, { message: "Key test failed (HTTP 401): fal refused the key from this field.", isError: true });
  const none = await new KeyClient(testRoute()).test("");
  assert.deepEqual(none, { message: "Key test failed: No fal key: set FAL_KEY or save one here.", isError: true });
  const answered401 = new KeyClient(async () => ({ ok: false, status: 401, json: async () => ({ ok: false, status: 401, message: "bad key" }) }));
  assert.equal((await answered401.test("x:y")).message, "Key test failed (HTTP 401): bad key");
});
