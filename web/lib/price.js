// The price of an SD3 Img2Img (fal) run as the node is set: the badge on the node and the cost in
// its summary line. The unit price comes from the pack's GET /fal/price route (fal's pricing API,
// cached by the server); until it answers, and when it cannot, fal's published price is used and
// the badge says so. No DOM and no ComfyUI imports, so that `node --test` can run it.

export const PRICE_ROUTE = "/fal/price";

// fal's published price for the endpoint (its pricing page), shown before the route answers.
export const PUBLISHED_PRICE = Object.freeze({
  endpoint_id: "fal-ai/stable-diffusion-v3-medium/image-to-image",
  unit_price: 0.035,
  unit: "image",
  currency: "USD",
  source: "published",
  note: "fal's published price; the pricing API was not asked yet",
});

// Units fal bills per result image (PER_IMAGE_UNITS in fal_core/pricing.py).
const PER_IMAGE = ["image", "images"];

/**
 * What a run costs: one request per picture, each billed for num_images images. A unit other than
 * per image is not guessed at: the published per-image price stands in, as on the server.
 */
export function runCost(price, pictures, numImages) {
  const perImage = PER_IMAGE.includes(String(price.unit).toLowerCase()) ? price.unit_price : PUBLISHED_PRICE.unit_price;
  return pictures * numImages * perImage;
}

/** "$0.035", "$0.07", "$1.40", "0.035 EUR": as many decimals as the amount needs, 2 to 4. */
export function formatMoney(amount, currency = "USD") {
  let decimals = 2;
  while (decimals < 4 && Math.abs(Number(amount.toFixed(decimals)) - amount) > 1e-9) decimals += 1;
  const text = amount.toFixed(decimals);
  return currency === "USD" ? `$${text}` : `${text} ${currency}`;
}

/**
 * The badge's text: "$0.035/Run" when the number of pictures is known, "$0.035/picture" when it
 * is not (an IMAGE from a node that does not say how many), "(published price)" when the unit
 * price is not fal's answer.
 */
export function badgeText(price, pictures, numImages) {
  const amount = formatMoney(runCost(price, pictures ?? 1, numImages), price.currency);
  const text = pictures == null ? `${amount}/picture` : `${amount}/Run`;
  return price.source === "published" ? `${text} (published price)` : text;
}

// How many pictures a node upstream of the fal node sends, for the nodes that say so without
// running: `count(inputName)` is the count of what is connected to that input (null: unknown).
const BATCH_SIZES = {
  LoadImage: () => 1,
  LoadImageOutput: () => 1,
  RepeatImageBatch: (count, widget) => {
    const n = count("image");
    return n == null ? null : n * Number(widget("amount"));
  },
  ImageBatch: (count) => {
    const a = count("image1");
    const b = count("image2");
    return a == null || b == null ? null : a + b;
  },
};
// Nodes that send on as many pictures (or URLs) as they get.
for (const type of ["FalUploadImage", "ImageScale", "ImageScaleBy", "ImageScaleToTotalPixels", "ImageInvert",
  "ImageBlur", "ImageSharpen", "ImageCrop", "Reroute"]) {
  BATCH_SIZES[type] = (count) => count(type === "Reroute" ? "" : "image");
}

/**
 * How many pictures reach the fal node, or null when a node on the way does not say.
 * `source(node, inputName)` is the node connected to that input (null when none); `node.type` is
 * its type and `node.widget(name)` a widget's value. `seen` stops at a loop.
 */
export function countPictures(node, source, seen = new Set()) {
  const upstream = source(node, "image") ?? source(node, "image_url");
  return upstream ? pictureCount(upstream, source, seen) : null;
}

function pictureCount(node, source, seen) {
  if (seen.has(node)) return null;
  seen.add(node);
  const rule = BATCH_SIZES[node.type];
  if (!rule) return null;
  const count = (inputName) => {
    const upstream = source(node, inputName);
    return upstream ? pictureCount(upstream, source, seen) : null;
  };
  const n = rule(count, (name) => node.widget(name));
  return Number.isFinite(n) && n >= 0 ? n : null;
}

/** A price as the route answers it, checked; null for anything else. */
export function checkPrice(body) {
  if (!body || typeof body !== "object") return null;
  const { unit_price: unitPrice, currency, source } = body;
  if (typeof unitPrice !== "number" || !Number.isFinite(unitPrice) || unitPrice < 0) return null;
  if (typeof currency !== "string" || !currency) return null;
  return { ...body, source: ["fal", "cache", "published"].includes(source) ? source : "published" };
}

/** The unit price the badges show: the published one until the route answered. */
export class PriceClient {
  /** `fetchApi(route, options)` answers a fetch Response (ComfyUI's api.fetchApi does). */
  constructor(fetchApi) {
    this.fetchApi = fetchApi;
    this.price = PUBLISHED_PRICE;
  }

  /** Ask the route once; keeps the price it had when the route is missing or answers nonsense. */
  async refresh() {
    try {
      const response = await this.fetchApi(PRICE_ROUTE, { method: "GET", cache: "no-store" });
      const price = response.ok ? checkPrice(await response.json()) : null;
      if (price) this.price = price;
    } catch {
      // ComfyUI unreachable: the published price stays, marked as such on the badge.
    }
    return this.price;
  }
}
