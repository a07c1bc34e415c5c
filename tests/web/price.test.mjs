import assert from "node:assert/strict";
import { test } from "node:test";

import { PRICE_ROUTE, PUBLISHED_PRICE, PriceClient, badgeText, checkPrice, countPictures, formatMoney, runCost } from "../../web/lib/price.js";

const FAL = { endpoint_id: PUBLISHED_PRICE.endpoint_id, unit_price: 0.035, unit: "image", currency: "USD", source: "fal", note: "" };

test("the price of a run is pictures × num_images × the unit price", () => {
  assert.equal(runCost(FAL, 3, 2), 3 * 2 * 0.035);
  assert.equal(badgeText(FAL, 1, 1), "$0.035/Run");
  assert.equal(badgeText(FAL, 1, 4), "$0.14/Run");
  assert.equal(badgeText(FAL, 3, 2), "$0.21/Run");
  assert.equal(badgeText({ ...FAL, source: "cache" }, 2, 1), "$0.07/Run");
});

test("a unit other than per image is not guessed at: the published per-image price stands in", () => {
  assert.equal(runCost({ ...FAL, unit: "megapixels", unit_price: 0.01 }, 2, 1), 2 * PUBLISHED_PRICE.unit_price);
  assert.equal(runCost({ ...FAL, unit: "Images", unit_price: 0.04 }, 2, 1), 0.08);
});

test("an unknown number of pictures is priced per picture; the published price is marked", () => {
  assert.equal(badgeText(FAL, null, 2), "$0.07/picture");
  assert.equal(badgeText(PUBLISHED_PRICE, 1, 1), "$0.035/Run (published price)");
});

test("amounts keep the decimals they need", () => {
  assert.equal(formatMoney(0.035), "$0.035");
  assert.equal(formatMoney(0.07), "$0.07");
  assert.equal(formatMoney(1.4), "$1.40");
  assert.equal(formatMoney(0.105), "$0.105");
  assert.equal(formatMoney(0.00125), "$0.0013");
  assert.equal(formatMoney(0.5, "EUR"), "0.50 EUR");
});

// A graph as the extension sees it: each node has a type, widget values and what feeds each input.
function graph(nodes) {
  const byId = Object.fromEntries(Object.entries(nodes).map(([id, n]) => [id, {
    type: n.type, widget: (name) => n.widgets?.[name], links: n.links ?? {},
  }]));
  return { node: (id) => byId[id], source: (node, input) => byId[node.links[input]] ?? null };
}

test("pictures are counted through the nodes that say how many they send", () => {
  const g = graph({
    load: { type: "LoadImage" },
    repeat: { type: "RepeatImageBatch", widgets: { amount: 3 }, links: { image: "load" } },
    scale: { type: "ImageScale", links: { image: "repeat" } },
    fal: { type: "FalSD3Img2Img", links: { image: "scale" } },
  });
  assert.equal(countPictures(g.node("fal"), g.source), 3);
  const urls = graph({
    load: { type: "LoadImage" }, other: { type: "LoadImage" },
    both: { type: "ImageBatch", links: { image1: "load", image2: "other" } },
    upload: { type: "FalUploadImage", links: { image: "both" } },
    fal: { type: "FalSD3Img2Img", links: { image_url: "upload" } },
  });
  assert.equal(countPictures(urls.node("fal"), urls.source), 2);
});

test("an unknown node, a missing input or a loop gives no count", () => {
  const unknown = graph({ vae: { type: "VAEDecode" }, fal: { type: "FalSD3Img2Img", links: { image: "vae" } } });
  assert.equal(countPictures(unknown.node("fal"), unknown.source), null);
  const open = graph({ fal: { type: "FalSD3Img2Img" } });
  assert.equal(countPictures(open.node("fal"), open.source), null);
  const loop = graph({
    a: { type: "ImageScale", links: { image: "b" } }, b: { type: "ImageInvert", links: { image: "a" } },
    fal: { type: "FalSD3Img2Img", links: { image: "a" } },
  });
  assert.equal(countPictures(loop.node("fal"), loop.source), null);
});

test("the route's answer replaces the published price; a missing route or nonsense keeps it", async () => {
  const reply = (status, body) => async (route) => {
    assert.equal(route, PRICE_ROUTE);
    return { ok: status < 400, status, json: async () => body };
  };
  const client = new PriceClient(reply(200, FAL));
  assert.equal(client.price, PUBLISHED_PRICE);  // the first render does not wait for the route
  assert.deepEqual(await client.refresh(), FAL);
  assert.equal((await new PriceClient(reply(404, { error: "no route" })).refresh()), PUBLISHED_PRICE);
  assert.equal((await new PriceClient(reply(200, { unit_price: "free" })).refresh()), PUBLISHED_PRICE);
  const down = new PriceClient(async () => { throw new TypeError("Failed to fetch"); });
  assert.equal(await down.refresh(), PUBLISHED_PRICE);
  assert.equal(checkPrice({ ...FAL, unit_price: -1 }), null);
  assert.equal(checkPrice({ ...FAL, source: "elsewhere" }).source, "published");
});
