// The settings dialog's fal key entry, without its DOM: talks to the pack's /fal/key route and
// says what to show. The key itself is only ever sent in the POST body; it is never kept here,
// written to the console or stored as a ComfyUI setting (those are readable by GET /settings).
// No ComfyUI imports, so that `node --test` can run it with a stand-in for api.fetchApi.

export const KEY_ROUTE = "/fal/key";
export const KEY_TEST_ROUTE = "/fal/key/test";

const SOURCES = {
  env: "the key from FAL_KEY in ComfyUI's environment",
  file: "the saved key",
  argument: "the key in the field (not saved yet)",
};

/** What to say about POST /fal/key/test's answer. */
export function describeTest(answer) {
  if (answer.ok) return { message: `fal accepted ${SOURCES[answer.source] ?? "the key"}.`, isError: false };
  const status = answer.status == null ? "" : ` (HTTP ${answer.status})`;
  return { message: `Key test failed${status}: ${answer.message}`, isError: true };
}

/** What to say about `{configured, source}` as GET /fal/key answers it. */
export function describeKey({ configured, source }) {
  if (source === "env") {
    return "A key comes from FAL_KEY in ComfyUI's environment; it wins over a key saved here.";
  }
  if (configured) {
    return "A key is saved (in ComfyUI's user folder, readable by its owner only). It is used from the next run on.";
  }
  return "No key set. Paste your fal key (key_id:key_secret) and press Save.";
}

/** The pack's route as a message to show: {message, isError}. */
export class KeyClient {
  /** `fetchApi(route, options)` answers a fetch Response (ComfyUI's api.fetchApi does). */
  constructor(fetchApi) {
    this.fetchApi = fetchApi;
  }

  status() {
    return this.#call({ method: "GET" });
  }

  save(key) {
    if (!key.trim()) return Promise.resolve({ message: "Paste a key first: the field is empty.", isError: true });
    return this.#call({
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ key }),
    }, "Saved. ");
  }

  clear() {
    return this.#call({ method: "DELETE" }, "Cleared. ");
  }

  /** Check `key` (the field's text), or the key in use when it is empty, against fal; runs no job. */
  test(key = "") {
    const body = key.trim() ? { key: key.trim() } : {};
    return this.#call({
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    }, "", KEY_TEST_ROUTE);
  }

  async #call(options, done = "", route = KEY_ROUTE) {
    let response;
    try {
      response = await this.fetchApi(route, options);
    } catch (error) {
      return { message: `Cannot reach ComfyUI (${error.message}); is it still running?`, isError: true };
    }
    const body = await response.json().catch(() => null);
    // The test route's answer says whether fal took the key, whatever the HTTP status.
    if (route === KEY_TEST_ROUTE && typeof body?.ok === "boolean") return describeTest(body);
    if (!response.ok || !body || body.error) {
      const problem = body?.error ?? `ComfyUI answered HTTP ${response.status} without a reason`;
      return { message: problem, isError: true };
    }
    return { message: done + describeKey(body), isError: false };
  }
}
