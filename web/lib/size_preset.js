// What SD3 Image Size shows: which widgets apply to the chosen preset, and the size for its title.
// No DOM and no ComfyUI imports, so that `node --test` can run it.

// fal's image_size presets in pixels (width, height). The same table as IMAGE_SIZE_PRESETS in
// fal_core/schema.py: tests/test_web_tables.py fails when the two differ.
export const PRESET_SIZES = Object.freeze({
  square_hd: [1024, 1024],
  square: [512, 512],
  portrait_4_3: [768, 1024],
  portrait_16_9: [576, 1024],
  landscape_4_3: [1024, 768],
  landscape_16_9: [1024, 576],
});

export const MATCH_INPUT = "match input";
export const CUSTOM = "custom";
const SEPARATOR = " · ";
const SIZE_SUFFIX = new RegExp(`${SEPARATOR}(${MATCH_INPUT}|\\d+×\\d+)$`);

/** Whether the width and height widgets mean anything for `preset`. */
export function usesCustomSize(preset) {
  return preset === CUSTOM;
}

/** "1024×768", "match input", or null for a preset this table does not know. */
export function sizeLabel(preset, width, height) {
  if (preset === MATCH_INPUT) return MATCH_INPUT;
  if (preset === CUSTOM) return `${width}×${height}`;
  const size = PRESET_SIZES[preset];
  return size ? `${size[0]}×${size[1]}` : null;
}

/** `title` with its size suffix replaced by `label`'s; a title the user typed is kept. */
export function titleWithSize(title, label) {
  const base = title.replace(SIZE_SUFFIX, "");
  return label ? `${base}${SEPARATOR}${label}` : base;
}

/** What the preset menu shows for a saved value: "portrait_4_3 · 768×1024"; the value stays as saved. */
export function presetLabel(preset) {
  const size = PRESET_SIZES[preset];
  return size ? `${preset}${SEPARATOR}${size[0]}×${size[1]}` : String(preset);
}
