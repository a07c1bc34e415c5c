import assert from "node:assert/strict";
import { test } from "node:test";

import { LINE_CHARS, StatusBoard, fold, statusLines } from "../../web/lib/status_lines.js";

const item = (phase, more = {}) => ({ phase, queue_position: null, request_id: null, log: null, ...more });
const event = (node, items, more = {}) => ({ node, elapsed: 3.24, finished: false, error: null, warning: null, items, ...more });
const texts = (lines) => lines.map((l) => l.text);

test("a running request shows its phase, queue position, request id, log line and elapsed time", () => {
  const lines = statusLines(event("3", [item("in_queue", { queue_position: 2, request_id: "req-1" })]));
  assert.deepEqual(texts(lines), ["fal · 3.2 s", "in queue (position 2) · req-1"]);
  const running = statusLines(event("3", [item("in_progress", { request_id: "req-1", log: "Step 3/28" })]));
  assert.deepEqual(texts(running), ["fal · 3.2 s", "running · req-1", "  fal: Step 3/28"]);
  assert.deepEqual(texts(statusLines(event("3", [item("uploading")]))), ["fal · 3.2 s", "uploading"]);
  assert.deepEqual(texts(statusLines(event("3", [item("downloading")]))), ["fal · 3.2 s", "downloading"]);
});

test("a batch numbers its requests", () => {
  const lines = statusLines(event("3", [item("done", { request_id: "a" }), item("in_progress", { request_id: "b" })]));
  assert.deepEqual(texts(lines), ["fal · 3.2 s", "#1 done · a", "#2 running · b"]);
});

test("a long fal log line is cut to fit the node", () => {
  const lines = statusLines(event("3", [item("in_progress", { log: "x".repeat(200) })]));
  assert.equal(lines[2].text.length, LINE_CHARS);
  assert.ok(lines[2].text.endsWith("…"));
});

test("the end of a run clears the lines, or shows its error or warning", () => {
  assert.deepEqual(statusLines(event("3", [item("done")], { finished: true })), []);
  assert.deepEqual(statusLines(event("3", [item("cancelled")], { finished: true })), []);
  const failed = statusLines(event("3", [item("failed")], { finished: true, error: "fal rejected the key (401)" }));
  assert.deepEqual(failed.map((l) => [l.text, l.tone]), [["fal · failed after 3.2 s", "error"], ["fal rejected the key (401)", "error"]]);
  const flagged = statusLines(event("3", [item("done")], { finished: true, warning: "fal flagged image 0 as NSFW" }));
  assert.deepEqual(flagged.map((l) => [l.text, l.tone]), [["warning: fal flagged image 0 as NSFW", "warning"]]);
});

test("a long error folds at spaces into a few lines", () => {
  const lines = fold("word ".repeat(100), 20, 4);
  assert.equal(lines.length, 4);
  assert.ok(lines.every((l) => l.length <= 20));
  assert.deepEqual(fold("line one\nline two"), ["line one", "line two"]);
});

test("several nodes keep their own lines, and a finished run clears only its node", () => {
  const board = new StatusBoard();
  assert.equal(board.update(event("3", [item("in_progress")])), "3");
  board.update(event("7", [item("in_queue", { queue_position: 1 })]));
  assert.deepEqual(texts(board.linesFor(3)), ["fal · 3.2 s", "running"]);
  assert.deepEqual(texts(board.linesFor("7")), ["fal · 3.2 s", "in queue (position 1)"]);
  board.update(event("3", [item("done")], { finished: true }));
  assert.deepEqual(board.linesFor("3"), []);
  assert.equal(board.linesFor("7").length, 2);
  board.clear();
  assert.deepEqual(board.linesFor("7"), []);
});
