// The pack's front end: the fal key entry in Settings > fal, the live status of SD3 Img2Img (fal)
// nodes, and SD3 Image Size's widgets and title. The logic lives in ./lib (tested with node --test);
// this file only ties it to ComfyUI's app, api and canvas.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { KeyClient } from "./lib/key_setting.js";
import { StatusBoard } from "./lib/status_lines.js";
import { sizeLabel, titleWithSize, usesCustomSize } from "./lib/size_preset.js";

const STATUS_EVENT = "fal_sd3.status";
const TONES = { info: "#ddd", log: "#9ab", warning: "#fc6", error: "#f77" };

// Exported for the browser test, which reads what a node shows while it runs.
export const board = new StatusBoard();

function element(tag, properties = {}, style = {}) {
  const node = Object.assign(document.createElement(tag), properties);
  Object.assign(node.style, style);
  return node;
}

// The settings entry is a custom renderer whose setter is never called: ComfyUI stores nothing
// for it, so the key never reaches comfy.settings.json (served to anyone by GET /settings).
function keyEntry() {
  const client = new KeyClient((route, options) => api.fetchApi(route, options));
  const input = element("input", {
    type: "password", placeholder: "key_id:key_secret", autocomplete: "off", spellcheck: false,
  }, { width: "16em" });
  input.setAttribute("aria-label", "fal API key");
  const save = element("button", { type: "button", textContent: "Save" });
  const clear = element("button", { type: "button", textContent: "Clear" });
  const line = element("div", { className: "fal-key-status" }, { fontSize: "0.85em", marginTop: "0.3em" });
  for (const button of [save, clear]) {
    button.className = "p-button p-component p-button-sm";
    button.style.marginLeft = "0.4em";
  }
  const show = ({ message, isError }) => {
    line.textContent = message;
    line.style.color = isError ? TONES.error : "";
  };
  const submit = async () => {
    const key = input.value;
    input.value = "";  // the field does not keep the key once it was sent
    show(await client.save(key));
  };
  save.addEventListener("click", submit);
  input.addEventListener("keydown", (event) => { if (event.key === "Enter") submit(); });
  clear.addEventListener("click", async () => show(await client.clear()));
  client.status().then(show);
  const row = element("div", {}, { display: "flex", alignItems: "center" });
  row.append(input, save, clear);
  const root = element("div", { className: "fal-key-entry" });
  root.append(row, line);
  return root;
}

function drawStatus(node, ctx) {
  const lines = board.linesFor(node.id);
  if (!lines.length || node.flags?.collapsed) return;
  const lineHeight = 15;
  const top = node.size[1] + 6;
  ctx.save();
  ctx.font = "12px monospace";
  const width = Math.max(node.size[0], ...lines.map((l) => ctx.measureText(l.text).width + 12));
  ctx.fillStyle = "rgba(20, 20, 20, 0.85)";
  ctx.fillRect(0, top, width, lines.length * lineHeight + 8);
  ctx.textAlign = "left";
  ctx.textBaseline = "top";
  lines.forEach((l, i) => {
    ctx.fillStyle = TONES[l.tone];
    ctx.fillText(l.text, 6, top + 4 + i * lineHeight);
  });
  ctx.restore();
}

function followPreset(node) {
  const widget = (name) => node.widgets?.find((w) => w.name === name);
  const preset = widget("preset");
  const width = widget("width");
  const height = widget("height");
  if (!preset || !width || !height) return;
  const update = () => {
    const hidden = !usesCustomSize(preset.value);
    node.title = titleWithSize(node.title, sizeLabel(preset.value, width.value, height.value));
    if (width.hidden !== hidden) {
      width.hidden = height.hidden = hidden;
      // Only when the widgets come or go, and growing only as far as they need, so that a
      // height the user gave the node is kept.
      const needed = node.computeSize()[1];
      node.setSize([node.size[0], hidden ? needed : Math.max(node.size[1], needed)]);
    }
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
  }],

  setup() {
    api.addEventListener(STATUS_EVENT, ({ detail }) => {
      board.update(detail);
      app.graph?.setDirtyCanvas(true, false);
    });
    api.addEventListener("execution_start", () => {
      board.clear();
      app.graph?.setDirtyCanvas(true, false);
    });
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name === "FalSD3Img2Img") {
      const draw = nodeType.prototype.onDrawForeground;
      nodeType.prototype.onDrawForeground = function (ctx, ...rest) {
        const result = draw?.call(this, ctx, ...rest);
        drawStatus(this, ctx);
        return result;
      };
    } else if (nodeData.name === "FalSD3ImageSize") {
      const created = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function (...args) {
        const result = created?.apply(this, args);
        this.falFollowPreset = followPreset(this);
        return result;
      };
      // A loaded workflow sets the widgets' values after the node was created.
      const configure = nodeType.prototype.onConfigure;
      nodeType.prototype.onConfigure = function (...args) {
        const result = configure?.apply(this, args);
        this.falFollowPreset?.();
        return result;
      };
    }
  },
});
