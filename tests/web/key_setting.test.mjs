import assert from "node:assert/strict";
import { test } from "node:test";

import { KEY_ROUTE, KeyClient, describeKey } from "../../web/lib/key_setting.js";

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
