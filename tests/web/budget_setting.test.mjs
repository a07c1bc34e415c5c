import assert from "node:assert/strict";
import { test } from "node:test";

import { BUDGET_ROUTE, BudgetClient, describeBudget } from "../../web/lib/budget_setting.js";

// A stand-in for the pack's /fal/budget route that behaves as nodes/routes.py does.
function fakeServer({ env = null, spent = 0.245 } = {}) {
  let saved = null;
  const sent = [];
  const reply = (status, body) => ({ ok: status < 400, status, json: async () => body });
  const state = () => ({ daily_budget: env ?? saved, source: env != null ? "env" : saved != null ? "file" : null,
    spent_today: spent, currency: "USD" });
  const server = async (route, options) => {
    assert.equal(route, BUDGET_ROUTE);
    if (options.method === "POST") {
      const { daily_budget: value } = JSON.parse(options.body);
      sent.push(value);
      const amount = value === null ? null : Number(value);
      if (amount !== null && !(amount >= 0)) {
        return reply(400, { error: `daily_budget='${value}': a daily budget is an amount in dollars, 0 or more` });
      }
      saved = amount;
    }
    return reply(200, state());
  };
  server.sent = sent;
  return server;
}

test("the budget is set, shown with today's spend, and cleared by an empty field", async () => {
  const server = fakeServer();
  const client = new BudgetClient(server);
  assert.equal((await client.status()).message, "No daily budget; spent today: $0.245.");
  const saved = await client.save(" $5 ");
  assert.equal(saved.isError, false);
  assert.equal(saved.limit, 5);
  assert.match(saved.message, /^Saved\. Daily budget \$5\.00; spent today: \$0\.245\. A run that would pass it is refused/);
  const cleared = await client.save("");
  assert.match(cleared.message, /^Cleared\. No daily budget/);
  assert.deepEqual(server.sent, ["5", null]);
});

test("a refused amount is the server's message; a budget from the environment says it wins", async () => {
  const refused = await new BudgetClient(fakeServer()).save("lots");
  assert.equal(refused.isError, true);
  assert.match(refused.message, /daily_budget='lots'/);
  const env = await new BudgetClient(fakeServer({ env: 2 })).status();
  assert.match(env.message, /^Daily budget \$2\.00 \(from FAL_SD3_DAILY_BUDGET in ComfyUI's environment; it wins/);
  assert.equal(describeBudget({ daily_budget: 0, source: "file", spent_today: 0, currency: "USD" }).startsWith("Daily budget $0.00"), true);
});
