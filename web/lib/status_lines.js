// The lines a running SD3 Img2Img (fal) node shows, from the server's "fal_sd3.status" events
// (nodes/status_view.py). No DOM and no ComfyUI imports, so that `node --test` can run it.

// The same words as _LABELS in nodes/status_view.py (tests/test_web_tables.py compares them).
const LABELS = {
  waiting: "waiting", uploading: "uploading", submitting: "submitting", in_queue: "in queue",
  in_progress: "running", completed: "finished", downloading: "downloading", done: "done",
  failed: "failed", cancelled: "cancelled",
};
// Canvas text does not wrap: longer fal log lines and errors are cut or folded at this width.
export const LINE_CHARS = 64;
const MAX_ERROR_LINES = 6;

function cut(text, width = LINE_CHARS) {
  return text.length > width ? `${text.slice(0, width - 1)}…` : text;
}

/** `text` folded into lines of at most `width` characters, at spaces where it can. */
export function fold(text, width = LINE_CHARS, maxLines = MAX_ERROR_LINES) {
  const lines = [];
  for (const paragraph of String(text).split("\n")) {
    let rest = paragraph.trim();
    while (rest.length > width) {
      const space = rest.lastIndexOf(" ", width);
      const end = space > width / 2 ? space : width;
      lines.push(rest.slice(0, end));
      rest = rest.slice(end).trim();
    }
    if (rest) lines.push(rest);
  }
  if (lines.length <= maxLines) return lines;
  return [...lines.slice(0, maxLines - 1), cut(lines.slice(maxLines - 1).join(" "), width)];
}

function itemLine(item, index, count) {
  let phase = LABELS[item.phase] ?? item.phase;
  if (item.queue_position != null) phase += ` (position ${item.queue_position})`;
  const parts = [count > 1 ? `#${index + 1} ${phase}` : phase];
  if (item.request_id) parts.push(item.request_id);
  return parts.join(" · ");
}

/**
 * The node's lines as {text, tone} (tone: "info", "log", "warning", "error"). While the run goes
 * on: elapsed time, then each request's phase, request id and latest fal log line. Once it ended:
 * only its error or warning, or nothing.
 */
export function statusLines(detail) {
  const items = detail.items ?? [];
  const elapsed = `${Number(detail.elapsed ?? 0).toFixed(1)} s`;
  const lines = [];
  if (!detail.finished) {
    lines.push({ text: `fal · ${elapsed}`, tone: "info" });
    items.forEach((item, i) => {
      lines.push({ text: cut(itemLine(item, i, items.length)), tone: "info" });
      if (item.log) lines.push({ text: cut(`  fal: ${item.log}`), tone: "log" });
    });
  } else if (detail.error) {
    lines.push({ text: `fal · failed after ${elapsed}`, tone: "error" });
    for (const text of fold(detail.error)) lines.push({ text, tone: "error" });
  }
  if (detail.warning) {
    for (const text of fold(`warning: ${detail.warning}`)) lines.push({ text, tone: "warning" });
  }
  return lines;
}

/** The lines of every fal node, by node id; several nodes can run at once. */
export class StatusBoard {
  #lines = new Map();

  /** Take one event; answers the id of the node whose lines changed. */
  update(detail) {
    const id = String(detail.node);
    const lines = statusLines(detail);
    if (lines.length) this.#lines.set(id, lines);
    else this.#lines.delete(id);
    return id;
  }

  linesFor(nodeId) {
    return this.#lines.get(String(nodeId)) ?? [];
  }

  /** Forget every node's lines (a new prompt starts, so old errors no longer apply). */
  clear() {
    this.#lines.clear();
  }
}
