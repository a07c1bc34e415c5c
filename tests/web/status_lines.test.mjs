import assert from "node:assert/strict";
import { test } from "node:test";

import { PUBLISHED_PRICE } from "../../web/lib/price.js";
import { LOG_CHARS, StatusBoard, sourceProblem, statusLines, summaryLine, wrap, wrapLines } from "../../web/lib/status_lines.js";

const item = (phase, more = {}) => ({ phase, queue_position: null, request_id: null, log: null, new_request: true, ...more });
const event = (node, items, more = {}) => ({
  node, elapsed: 3.24, outcome: "running", finished: false, error: null, warning: null, num_images: 1, items, ...more,
});
const ended = (outcome, items, more = {}) => event("3", items, { outcome, finished: true, ...more });
const texts = (lines) => lines.map((l) => l.text);
const chars = (text) => text.length;

test("a running request shows its phase, queue position, request id, log line and elapsed time", () => {
  const queued = { queue_position: 2, request_id: "req-1", label: "in queue (position 2)" };
  const lines = statusLines(event("3", [item("in_queue", queued)]));
  assert.deepEqual(texts(lines), ["fal · 3.2 s", "in queue (position 2) · req-1"]);
  const runningItem = item("in_progress", { request_id: "req-1", log: "Step 3/28", label: "running" });
  const running = statusLines(event("3", [runningItem]));
  assert.deepEqual(texts(running), ["fal · 3.2 s", "running · req-1", "  fal: Step 3/28"]);
  assert.deepEqual(texts(statusLines(event("3", [item("uploading")]))), ["fal · 3.2 s", "uploading"]);
  assert.deepEqual(texts(statusLines(event("3", [item("downloading")]))), ["fal · 3.2 s", "downloading"]);
});

test("the server's label is shown, and a phase without one is shown as its name", () => {
  const next = statusLines(event("3", [item("in_queue", { queue_position: 0, request_id: "r", label: "next in queue" })]));
  assert.deepEqual(texts(next), ["fal · 3.2 s", "next in queue · r"]);
  const unknown = statusLines(event("3", [item("warming_up")]));
  assert.deepEqual(texts(unknown), ["fal · 3.2 s", "warming up"]);
});

test("a batch of three shows a line per request", () => {
  const lines = statusLines(event("3", [item("done", { request_id: "a" }),
    item("in_progress", { request_id: "b", label: "running" }),
    item("in_queue", { queue_position: 4, request_id: "c", label: "in queue (position 4)" })]));
  assert.deepEqual(texts(lines), ["fal · 3.2 s", "#1 done · a", "#2 running · b", "#3 in queue (position 4) · c"]);
});

test("a long fal log line is cut to one line", () => {
  const lines = statusLines(event("3", [item("in_progress", { log: "x".repeat(200) })]));
  assert.equal(lines[2].text.length, LOG_CHARS);
  assert.ok(lines[2].text.endsWith("…"));
});

test("a success leaves one summary line: requests, seconds and cost", () => {
  const price = { ...PUBLISHED_PRICE, source: "fal" };
  const one = ended("done", [item("done", { request_id: "r1" })]);
  assert.deepEqual(texts(statusLines(one, price)), ["done · 1 request · 3.2 s · $0.035"]);
  const three = ended("done", [item("done"), item("done"), item("done")], { num_images: 2 });
  assert.deepEqual(texts(statusLines(three, price)), ["done · 3 requests · 3.2 s · $0.21"]);
  const mixed = ended("done", [item("done"), item("done", { new_request: false }), item("done")]);
  assert.equal(summaryLine(mixed, price), "done · 3 requests (1 reused) · 3.2 s · $0.07");
  assert.equal(summaryLine(one, null), "done · 1 request · 3.2 s");
  // The server's cost of one request, as it journaled the spend, wins over the badge's price.
  const journaled = ended("done", [item("done"), item("done", { new_request: false }), item("done")],
    { num_images: 2, cost: { amount: 0.08, currency: "USD", source: "fal" } });
  assert.equal(summaryLine(journaled, price), "done · 3 requests (1 reused) · 3.2 s · $0.16");
});

test("a result the journal served says so, with no charge", () => {
  const reused = ended("done", [item("done", { request_id: "ac0d1ec1-9350-440a-9c57-bc92f1194144", new_request: false })]);
  assert.deepEqual(texts(statusLines(reused, PUBLISHED_PRICE)), ["done · reused request ac0d1ec1…, no charge · 3.2 s"]);
  const all = ended("done", [item("done", { new_request: false }), item("done", { new_request: false })]);
  assert.equal(summaryLine(all, PUBLISHED_PRICE), "done · reused 2 requests, no charge · 3.2 s");
});

test("an error is shown in full, a cancel and a warning too", () => {
  const error = "fal rejected the key (401): " + "check the key ".repeat(20);
  const failed = statusLines(ended("failed", [item("failed")], { error }));
  assert.deepEqual(failed.map((l) => [l.text, l.tone]), [["failed after 3.2 s", "error"], [error, "error"]]);
  assert.deepEqual(texts(statusLines(ended("cancelled", [item("cancelled")]))), ["cancelled after 3.2 s"]);
  const flagged = statusLines(ended("done", [item("done")], { warning: "fal flagged image 0 as NSFW" }), PUBLISHED_PRICE);
  assert.deepEqual(flagged.map((l) => l.tone), ["info", "warning"]);
  assert.equal(flagged[1].text, "warning: fal flagged image 0 as NSFW");
});

test("wrapping keeps every word and breaks at spaces, inside a word only when it must", () => {
  const text = "word ".repeat(30).trim();
  const lines = wrap(text, 20, chars);
  assert.ok(lines.every((l) => l.length <= 20));
  assert.equal(lines.join(" "), text);
  assert.deepEqual(wrap("abcdefghij klm", 4, chars), ["abcd", "efgh", "ij", "klm"]);
  assert.deepEqual(wrap("line one\nline two", 40, chars), ["line one", "line two"]);
  assert.deepEqual(wrap("  fal: Step 3/28", 40, chars), ["  fal: Step 3/28"]);
  const wrapped = wrapLines([{ text: "a b c d", tone: "error" }], 3, chars);
  assert.deepEqual(wrapped, [{ text: "a b", tone: "error" }, { text: "c d", tone: "error" }]);
});

test("the picture inputs are checked before queueing", () => {
  assert.match(sourceProblem({ image: true, image_url: true }), /^Both image and image_url are connected/);
  assert.match(sourceProblem({ image: false, image_url: false }), /^Nothing to transform/);
  assert.equal(sourceProblem({ image: true, image_url: false }), null);
  assert.equal(sourceProblem({ image: false, image_url: true }), null);
});

test("each node keeps its own last event; a new run's first event replaces the last run's", () => {
  const board = new StatusBoard();
  assert.equal(board.update(ended("failed", [], { error: "no picture to transform" })), "3");
  board.update(event("7", [item("in_queue", { queue_position: 1, label: "in queue (position 1)" })]));
  assert.deepEqual(texts(board.linesFor(3)), ["failed after 3.2 s", "no picture to transform"]);
  board.update(event("3", [item("waiting")]));
  assert.deepEqual(texts(board.linesFor("3")), ["fal · 3.2 s", "waiting"]);
  assert.deepEqual(texts(board.linesFor("7")), ["fal · 3.2 s", "in queue (position 1)"]);
  const problem = "Nothing to transform";
  assert.deepEqual(board.linesFor("8", { problem }), [{ text: problem, tone: "error" }]);
  assert.equal(board.linesFor("3", { problem })[0].text, problem);
});
