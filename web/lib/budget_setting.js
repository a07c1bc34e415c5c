// The settings dialog's daily budget entry, without its DOM: talks to the pack's /fal/budget
// route (nodes/routes.py) and says what to show. No ComfyUI imports, so that `node --test` can
// run it with a stand-in for api.fetchApi.

import { formatMoney } from "./price.js";

export const BUDGET_ROUTE = "/fal/budget";

/** What to say about `{daily_budget, source, spent_today, currency}` as GET /fal/budget answers it. */
export function describeBudget({ daily_budget: limit, source, spent_today: spent, currency }) {
  const today = `spent today: ${formatMoney(spent ?? 0, currency)}`;
  if (limit == null) return `No daily budget; ${today}.`;
  const where = source === "env" ? " (from FAL_SD3_DAILY_BUDGET in ComfyUI's environment; it wins over one set here)" : "";
  return `Daily budget ${formatMoney(limit, currency)}${where}; ${today}. A run that would pass it is refused before anything is sent.`;
}

/** The pack's budget route as a message to show: {message, isError, limit}. */
export class BudgetClient {
  constructor(fetchApi) {
    this.fetchApi = fetchApi;
  }

  status() {
    return this.#call({ method: "GET" });
  }

  /** Save the field's text as the budget in dollars; an empty field clears it. */
  save(text) {
    const value = String(text).trim().replace(/^\$/, "");
    return this.#call({
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ daily_budget: value === "" ? null : value }),
    }, value === "" ? "Cleared. " : "Saved. ");
  }

  async #call(options, done = "") {
    let response;
    try {
      response = await this.fetchApi(BUDGET_ROUTE, options);
    } catch (error) {
      return { message: `Cannot reach ComfyUI (${error.message}); is it still running?`, isError: true, limit: null };
    }
    const body = await response.json().catch(() => null);
    if (!response.ok || !body || body.error) {
      const problem = body?.error ?? `ComfyUI answered HTTP ${response.status} without a reason`;
      return { message: problem, isError: true, limit: null };
    }
    return { message: done + describeBudget(body), isError: false, limit: body.daily_budget };
  }
}
