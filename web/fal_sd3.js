// The pack's front end: the fal key and daily budget entries in Settings > fal, the status and price badge of
// SD3 Img2Img (fal) nodes, and SD3 Image Size's widgets and title. The logic lives in ./lib
// (tested with node --test); this file only ties it to ComfyUI's app, api and canvas.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { BudgetClient } from "./lib/budget_setting.js";
import { KeyClient } from "./lib/key_setting.js";
import { PriceClient, badgeText, countPictures } from "./lib/price.js";
import { StatusBoard, sourceProblem, wrapLines } from "./lib/status_lines.js";
import { presetLabel, sizeLabel, titleWithSize, usesCustomSize } from "./lib/size_preset.js";

const STATUS_EVENT = "fal_sd3.status";
const STATUS_WIDGET = "fal_status";
const TONES = { info: "#ddd", log: "#9ab", warning: "#fc6", error: "#f77" };
const FONT = "12px sans-serif";
const LINE_HEIGHT = 15;
const PADDING = 5;
const MARGIN = 15;  // ComfyUI's widgets keep this much from the node's sides
const PRICE_RETRY_MS = 5000;

// Exported for the browser test, which reads what a node shows.
export const board = new StatusBoard();
export const prices = new PriceClient((route, options) => api.fetchApi(route, options));

function element(tag, properties = {}, style = {}) {
  const node = Object.assign(document.createElement(tag), properties);
  Object.assign(node.style, style);
  return node;
}

// Styled here: newer front ends no longer style PrimeVue's button classes in settings.
function button(label) {
  return element("button", { type: "button", textContent: label }, {
    marginLeft: "0.4em", padding: "0.3em 0.9em", borderRadius: "6px", cursor: "pointer",
    border: "1px solid var(--border-color, #4b4b4b)", background: "var(--comfy-input-bg, #222)",
    color: "var(--input-text, #ddd)", font: "inherit",
  });
}

/** The line under a settings entry, and the function that shows a {message, isError} on it. */
function messageLine(className) {
  const line = element("div", { className },
    { fontSize: "0.85em", marginTop: "0.3em", whiteSpace: "normal", overflowWrap: "anywhere" });
  const show = ({ message, isError }) => {
    line.textContent = message;
    line.style.color = isError ? TONES.error : "";
  };
  return [line, show];
}

// The daily budget lives in the pack's state folder (budget.json), read by every run, headless
// ones too; like the key entry, ComfyUI stores nothing for this custom renderer.
function budgetEntry() {
  const client = new BudgetClient((route, options) => api.fetchApi(route, options));
  const input = element("input", { type: "text", inputMode: "decimal", placeholder: "dollars, empty for none" },
    { width: "10em" });
  input.setAttribute("aria-label", "fal daily budget");
  const save = button("Save");
  const [line, show] = messageLine("fal-budget-status");
  const answer = (result) => {
    if (!result.isError) input.value = result.limit == null ? "" : String(result.limit);
    show(result);
  };
  const submit = async () => answer(await client.save(input.value));
  save.addEventListener("click", submit);
  input.addEventListener("keydown", (event) => { if (event.key === "Enter") submit(); });
  client.status().then(answer);
  const row = element("div", {}, { display: "flex", alignItems: "center" });
  row.append(input, save);
  const root = element("div", { className: "fal-budget-entry" });
  root.append(row, line);
  return root;
}

// The settings entry is a custom renderer whose setter is never called: ComfyUI stores nothing
// for it, so the key never reaches comfy.settings.json (served to anyone by GET /settings).
function keyEntry() {
  const client = new KeyClient((route, options) => api.fetchApi(route, options));
  const input = element("input", {
    type: "password", placeholder: "key_id:key_secret", autocomplete: "off", spellcheck: false,
  }, { width: "16em" });
  input.setAttribute("aria-label", "fal API key");
  const buttons = ["Save", "Test", "Clear"].map(button);
  const [save, test, clear] = buttons;
  test.title = "Ask fal whether the key in the field (or, with an empty field, the key in use) is accepted; runs no job.";
  const [line, show] = messageLine("fal-key-status");
  const submit = async () => {
    const answer = await client.save(input.value);
    // A saved key leaves the field; a refused one stays there to be corrected.
    if (!answer.isError) input.value = "";
    show(answer);
  };
  save.addEventListener("click", submit);
  input.addEventListener("keydown", (event) => { if (event.key === "Enter") submit(); });
  test.addEventListener("click", async () => {
    show({ message: "Asking fal…", isError: false });
    show(await client.test(input.value));
  });
  clear.addEventListener("click", async () => show(await client.clear()));
  client.status().then(show);
  const row = element("div", {}, { display: "flex", alignItems: "center" });
  row.append(input, ...buttons);
  const root = element("div", { className: "fal-key-entry" });
  root.append(row, line);
  return root;
}

// --- SD3 Img2Img (fal): status inside the node, price badge -------------------------------------

let measureContext = null;
function measure(text) {
  measureContext ??= document.createElement("canvas").getContext("2d");
  measureContext.font = FONT;
  return measureContext.measureText(text).width;
}

function linked(node, name) {
  return node.inputs?.find((input) => input.name === name)?.link != null;
}

function upstreamOf(node, inputName) {
  const input = node.inputs?.find((i) => i.name === inputName);
  if (input?.link == null) return null;
  const { graph } = node;
  const link = graph?.getLink?.(input.link) ?? graph?.links?.get?.(input.link) ?? graph?.links?.[input.link];
  const origin = link && graph.getNodeById(link.origin_id);
  if (!origin) return null;
  return {
    type: origin.type,
    widget: (name) => origin.widgets?.find((w) => w.name === name)?.value,
    inputs: (name) => upstreamOf(origin, name),
    id: origin.id,
  };
}

/** The status lines of `node`, wrapped to a widget `width` wide (exported for the browser test). */
export function shownLines(node, width) {
  const problem = sourceProblem({ image: linked(node, "image"), image_url: linked(node, "image_url") });
  const lines = board.linesFor(node.id, { problem, price: prices.price });
  return wrapLines(lines, Math.max(width - 2 * (MARGIN + PADDING), 40), measure);
}

// Drawn by the canvas inside the node, below its widgets; never saved with the workflow
// (serialize: false), so it can never shift the saved widget values.
function statusWidget(node) {
  const height = (lines) => (lines.length ? lines.length * LINE_HEIGHT + 2 * PADDING : 0);
  return node.addCustomWidget({
    name: STATUS_WIDGET,
    type: STATUS_WIDGET,
    value: "",
    serialize: false,
    options: { serialize: false },
    // -4 cancels the gap ComfyUI adds after every widget: an empty status takes no room.
    computeSize(width) {
      const lines = shownLines(node, width ?? node.size[0]);
      return [width ?? node.size[0], lines.length ? height(lines) : -4];
    },
    draw(ctx, _node, width, y) {
      const lines = shownLines(node, width);
      if (!lines.length) return;
      ctx.save();
      ctx.fillStyle = "rgba(0, 0, 0, 0.35)";
      ctx.beginPath();
      ctx.roundRect?.(MARGIN, y, width - 2 * MARGIN, height(lines), 4) ?? ctx.rect(MARGIN, y, width - 2 * MARGIN, height(lines));
      ctx.fill();
      ctx.font = FONT;
      ctx.textAlign = "left";
      ctx.textBaseline = "top";
      lines.forEach((l, i) => {
        ctx.fillStyle = TONES[l.tone];
        ctx.fillText(l.text, MARGIN + PADDING, y + PADDING + 1 + i * LINE_HEIGHT);
      });
      ctx.restore();
    },
  });
}

/** Grow or shrink the node to fit its status; a height the user gave the node is its minimum. */
function fitNode(node) {
  if (node.falAutoHeight === undefined || Math.abs(node.size[1] - node.falAutoHeight) >= 1) {
    node.falBaseHeight = node.size[1];
  }
  // Where the canvas last put the status (the widgets above it keep their place during a run):
  // computeSize alone can come out a few pixels short of the canvas's own layout.
  const widget = node.widgets?.find((w) => w.name === STATUS_WIDGET);
  const status = widget?.computeSize(node.size[0])[1] ?? 0;
  const laidOut = widget?.y ? widget.y + Math.max(status, 0) + 6 : 0;
  const height = Math.max(node.falBaseHeight, node.computeSize()[1], laidOut);
  if (Math.abs(height - node.size[1]) >= 1) node.setSize([node.size[0], height]);
  node.falAutoHeight = node.size[1];
  node.setDirtyCanvas?.(true, true);
}

// The price badge, drawn like ComfyUI's API-node price badges (LGraphBadge with a dollar icon);
// its own small class because the front end does not export LGraphBadge to extensions.
class PriceBadge {
  height = 20;
  fontSize = 12;
  padding = 6;
  icon = { unicode: "\ue96b", fontSize: 8, color: "#FABC25", bgColor: "#654020" };
  bgColor = "#8D6932";
  fgColor = "#fff";

  constructor(text) {
    this.text = text;
  }

  get visible() {
    return true;
  }

  getWidth(ctx) {
    const { font } = ctx;
    ctx.font = `${this.icon.fontSize}px 'PrimeIcons'`;
    const iconWidth = ctx.measureText(this.icon.unicode).width + this.padding;
    ctx.font = `${this.fontSize}px sans-serif`;
    const width = iconWidth + ctx.measureText(this.text).width + this.padding * 2;
    ctx.font = font;
    return width;
  }

  draw(ctx, x, y) {
    const { font, fillStyle, textBaseline, textAlign } = ctx;
    const width = this.getWidth(ctx);
    ctx.fillStyle = this.bgColor;
    ctx.beginPath();
    ctx.roundRect?.(x, y, width, this.height, 5) ?? ctx.rect(x, y, width, this.height);
    ctx.fill();
    const centerY = y + this.height / 2;
    const radius = this.icon.fontSize / 2 + 2;
    const iconX = x + this.padding;
    ctx.beginPath();
    ctx.arc(iconX + radius, centerY, radius, 0, 2 * Math.PI);
    ctx.fillStyle = this.icon.bgColor;
    ctx.fill();
    ctx.font = `${this.icon.fontSize}px 'PrimeIcons'`;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillStyle = this.icon.color;
    ctx.fillText(this.icon.unicode, iconX + radius, centerY);
    ctx.font = `${this.fontSize}px sans-serif`;
    ctx.textAlign = "left";
    ctx.fillStyle = this.fgColor;
    ctx.fillText(this.text, iconX + this.icon.fontSize + this.padding / 2 + 4, centerY + 1);
    Object.assign(ctx, { font, fillStyle, textBaseline, textAlign });
  }
}

/** The badge's text for `node` as its widgets and links are now. */
export function priceText(node) {
  const numImages = Number(node.widgets?.find((w) => w.name === "num_images")?.value ?? 1);
  const self = { inputs: (name) => upstreamOf(node, name) };
  const pictures = countPictures(self, (n, name) => n.inputs(name));
  return badgeText(prices.price, pictures, numImages);
}

function setUpFalNode(node) {
  statusWidget(node);
  // Read at every draw: the badge follows num_images, the links and the price as they change.
  node.badges?.push(() => new PriceBadge(priceText(node)));
  node.falFit = () => fitNode(node);
}

// --- SD3 Image Size ---------------------------------------------------------------------------

// ComfyUI lays out hidden widgets too (front end 1.27 leaves their room empty): a hidden widget
// measures -4, cancelling the gap after it.
function setHidden(widget, hidden) {
  widget.hidden = hidden;
  if (hidden) widget.computeSize = () => [0, -4];
  else delete widget.computeSize;
}

function labelPresets(preset) {
  // Newer front ends map values to labels in the widget and its menu; 1.27 reads _displayValue.
  preset.options.getOptionLabel = (value) => presetLabel(value);
  Object.defineProperty(preset, "_displayValue", {
    configurable: true,
    get() {
      return this.computedDisabled ? "" : presetLabel(this.value);
    },
  });
}

function followPreset(node) {
  const widget = (name) => node.widgets?.find((w) => w.name === name);
  const preset = widget("preset");
  const width = widget("width");
  const height = widget("height");
  if (!preset || !width || !height) return;
  labelPresets(preset);
  const update = () => {
    const hidden = !usesCustomSize(preset.value);
    node.title = titleWithSize(node.title, sizeLabel(preset.value, width.value, height.value));
    setHidden(width, hidden);
    setHidden(height, hidden);
    // With width and height hidden every other row is fixed: any height beyond what they need is
    // empty room, also in a workflow saved that way. Shown, they keep a height the user gave.
    const needed = node.computeSize()[1];
    const fitted = hidden ? needed : Math.max(node.size[1], needed);
    if (Math.abs(fitted - node.size[1]) >= 1) node.setSize([node.size[0], fitted]);
    node.setDirtyCanvas(true, true);
  };
  for (const w of [preset, width, height]) {
    const callback = w.callback;
    w.callback = function (...args) {
      const result = callback?.apply(this, args);
      update();
      return result;
    };
  }
  update();
  return update;
}

function chain(prototype, method, after) {
  const before = prototype[method];
  prototype[method] = function (...args) {
    const result = before?.apply(this, args);
    after.call(this, ...args);
    return result;
  };
}

app.registerExtension({
  name: "fal_sd3",
  settings: [{
    id: "fal_sd3.api_key",
    category: ["fal", "fal API key"],
    name: "fal API key",
    tooltip: "Kept in a file in ComfyUI's user folder, never in a workflow or a setting. "
      + "FAL_KEY in ComfyUI's environment wins over it.",
    type: keyEntry,
    defaultValue: "",
  }, {
    id: "fal_sd3.daily_budget",
    category: ["fal", "Daily budget"],
    name: "Daily budget (USD)",
    tooltip: "A run that would take today's fal spend past it is refused before anything is sent. "
      + "FAL_SD3_DAILY_BUDGET in ComfyUI's environment wins over it.",
    type: budgetEntry,
    defaultValue: "",
  }],

  setup() {
    api.addEventListener(STATUS_EVENT, ({ detail }) => {
      board.update(detail);
      app.graph?.getNodeById(detail.node)?.falFit?.();
      app.graph?.setDirtyCanvas(true, false);
    });
    // The price is asked again at every run; the badges show the published one until it answers.
    const refresh = () => prices.refresh().then((price) => {
      app.graph?.setDirtyCanvas(true, false);
      return price;
    });
    api.addEventListener("execution_start", refresh);
    // A server that just started may still be asking fal: ask once more a little later.
    refresh().then((price) => {
      if (price.source === "published") setTimeout(refresh, PRICE_RETRY_MS);
    });
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name === "FalSD3Img2Img") {
      chain(nodeType.prototype, "onNodeCreated", function () {
        setUpFalNode(this);
      });
      chain(nodeType.prototype, "onConnectionsChange", function () {
        this.falFit?.();
      });
      chain(nodeType.prototype, "onConfigure", function () {
        this.falFit?.();
      });
    } else if (nodeData.name === "FalSD3ImageSize") {
      chain(nodeType.prototype, "onNodeCreated", function () {
        this.falFollowPreset = followPreset(this);
      });
      // A loaded workflow sets the widgets' values after the node was created.
      chain(nodeType.prototype, "onConfigure", function () {
        this.falFollowPreset?.();
      });
    }
  },
});
