import assert from "node:assert/strict";
import { test } from "node:test";

import { PRESET_SIZES, presetLabel, sizeLabel, titleWithSize, usesCustomSize } from "../../web/lib/size_preset.js";

test("width and height are shown only for the custom preset", () => {
  assert.equal(usesCustomSize("custom"), true);
  for (const preset of ["match input", ...Object.keys(PRESET_SIZES)]) assert.equal(usesCustomSize(preset), false);
});

test("the label is the preset's pixel size, the custom size or match input", () => {
  assert.equal(sizeLabel("landscape_4_3", 64, 64), "1024×768");
  assert.equal(sizeLabel("portrait_16_9", 64, 64), "576×1024");
  assert.equal(sizeLabel("custom", 640, 480), "640×480");
  assert.equal(sizeLabel("match input", 640, 480), "match input");
  assert.equal(sizeLabel("no_such_preset", 640, 480), null);
});

test("the title's size follows the preset and keeps a title the user typed", () => {
  let title = titleWithSize("SD3 Image Size", "1024×768");
  assert.equal(title, "SD3 Image Size · 1024×768");
  title = titleWithSize(title, "match input");
  assert.equal(title, "SD3 Image Size · match input");
  title = titleWithSize(title, "640×480");
  assert.equal(title, "SD3 Image Size · 640×480");
  assert.equal(titleWithSize("Poster · wide", "512×512"), "Poster · wide · 512×512");
  assert.equal(titleWithSize("SD3 Image Size · 512×512", null), "SD3 Image Size");
});

test("the preset menu labels name the pixel size; match input and custom stay as they are", () => {
  assert.equal(presetLabel("portrait_4_3"), "portrait_4_3 · 768×1024");
  assert.equal(presetLabel("square_hd"), "square_hd · 1024×1024");
  assert.equal(presetLabel("match input"), "match input");
  assert.equal(presetLabel("custom"), "custom");
});
