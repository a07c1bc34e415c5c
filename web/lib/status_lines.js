// What an SD3 Img2Img (fal) node shows inside its own area, from the server's "fal_sd3.status"
// events (nodes/status_view.py) and its input links. No DOM and no ComfyUI imports, so that
// `node --test` can run it.

import { formatMoney, runCost } from "./price.js";

// fal's log lines change every second while a request runs: one line each, cut to this many
// characters. Everything else (phases, errors, warnings) is wrapped to the node's width in full.
export const LOG_CHARS = 80;

function cut(text, width = LOG_CHARS) {
  return text.length > width ? `${text.slice(0, width - 1)}…` : text;
}

// The server words each phase (nodes/status_view.py) and sends the label with the event.
function phaseLabel(item) {
  return item.label ?? String(item.phase).replaceAll("_", " ");
}

function itemLine(item, index, count) {
  const parts = [count > 1 ? `#${index + 1} ${phaseLabel(item)}` : phaseLabel(item)];
  if (item.request_id) parts.push(item.request_id);
  return parts.join(" · ");
}

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
// fal's request ids are UUIDs: their first group is enough to find one in the journal or the
// dashboard, and keeps the summary on one line.
const shortId = (id) => (id && id.length > 12 ? `${id.slice(0, 8)}…` : String(id));

/** The one line a successful run leaves on the node: requests, seconds and what fal charged. */
export function summaryLine(detail, price) {
  const items = detail.items ?? [];
  const seconds = `${Number(detail.elapsed ?? 0).toFixed(1)} s`;
  const reused = items.filter((item) => !item.new_request);
  if (items.length && reused.length === items.length) {
    const what = items.length === 1 ? `reused request ${shortId(items[0].request_id)}` : `reused ${plural(items.length, "request")}`;
    return `done · ${what}, no charge · ${seconds}`;
  }
  const requests = reused.length ? `${plural(items.length, "request")} (${reused.length} reused)`
    : plural(items.length, "request");
  const parts = ["done", requests, seconds];
  const paid = items.length - reused.length;
  if (detail.cost) {
    // The server's price of one request, as it journaled the run's spend.
    parts.push(formatMoney(paid * detail.cost.amount, detail.cost.currency));
  } else if (price) {
    parts.push(formatMoney(runCost(price, paid, detail.num_images ?? 1), price.currency));
  }
  return parts.join(" · ");
}

/**
 * The node's lines as {text, tone} (tone: "info", "log", "warning", "error"), before wrapping.
 * While the run goes on: elapsed time, then each request's phase, request id and latest fal log
 * line. Once it ended: the summary of a success, or the error in full, or the cancellation.
 */
export function statusLines(detail, price = null) {
  const items = detail.items ?? [];
  const elapsed = `${Number(detail.elapsed ?? 0).toFixed(1)} s`;
  const outcome = detail.outcome ?? (detail.finished ? (detail.error ? "failed" : "done") : "running");
  const lines = [];
  if (outcome === "running") {
    lines.push({ text: `fal · ${elapsed}`, tone: "info" });
    items.forEach((item, i) => {
      lines.push({ text: itemLine(item, i, items.length), tone: "info" });
      if (item.log) lines.push({ text: cut(`  fal: ${item.log}`), tone: "log" });
    });
  } else if (outcome === "done") {
    lines.push({ text: summaryLine(detail, price), tone: "info" });
  } else if (outcome === "cancelled") {
    lines.push({ text: `cancelled after ${elapsed}`, tone: "warning" });
  } else {
    lines.push({ text: `failed after ${elapsed}`, tone: "error" });
    if (detail.error) lines.push({ text: detail.error, tone: "error" });
  }
  if (detail.warning) lines.push({ text: `warning: ${detail.warning}`, tone: "warning" });
  return lines;
}

/** What is wrong with the node's picture inputs before it is queued, or null. */
export function sourceProblem({ image, image_url: imageUrl }) {
  if (image && imageUrl) {
    return "Both image and image_url are connected: disconnect one "
      + "(image for a picture, image_url for URLs from fal Upload Image).";
  }
  if (!image && !imageUrl) {
    return "Nothing to transform: connect image (e.g. Load Image) or image_url (e.g. fal Upload Image).";
  }
  return null;
}

/**
 * `text` split into lines that each fit `width`, as measured by `measure(text)` (pixels on a
 * canvas, characters in tests); breaks at spaces where it can, inside a word where it must.
 */
export function wrap(text, width, measure) {
  const lines = [];
  for (const paragraph of String(text).split("\n")) {
    const indent = paragraph.match(/^ */)[0];
    let line = indent;
    for (const word of paragraph.slice(indent.length).split(" ")) {
      const candidate = line.trim() ? `${line} ${word}` : line + word;
      if (measure(candidate) <= width) {
        line = candidate;
        continue;
      }
      if (line) lines.push(line);
      line = word;
      while (measure(line) > width && line.length > 1) {
        let end = line.length - 1;
        while (end > 1 && measure(line.slice(0, end)) > width) end -= 1;
        lines.push(line.slice(0, end));
        line = line.slice(end);
      }
    }
    lines.push(line);
  }
  return lines;
}

/** Every line wrapped to `width`: [{text, tone}], nothing cut. */
export function wrapLines(lines, width, measure) {
  return lines.flatMap(({ text, tone }) => wrap(text, width, measure).map((part) => ({ text: part, tone })));
}

/** The last event of every fal node, by node id; several nodes can run at once. */
export class StatusBoard {
  #details = new Map();

  /** Take one event; answers the id of the node it is about. A run's first event replaces the last run's. */
  update(detail) {
    const id = String(detail.node);
    this.#details.set(id, detail);
    return id;
  }

  detailFor(nodeId) {
    return this.#details.get(String(nodeId)) ?? null;
  }

  /** The node's lines before wrapping: its input problem first, then its run's. */
  linesFor(nodeId, { problem = null, price = null } = {}) {
    const detail = this.detailFor(nodeId);
    const lines = problem ? [{ text: problem, tone: "error" }] : [];
    return detail ? [...lines, ...statusLines(detail, price)] : lines;
  }
}
