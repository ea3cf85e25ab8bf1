// Offers and placements: GET /v1/kpis?from=&to=&by=day for the chosen UTC days
// (each offer's figures over the range, each day's for the chart, the budgets
// now) and GET /v1/model (the learnt propensity per offer and context bucket of
// the expected-value placements). The range is kept in the address (?from=&to=).

import { el, facts, getJSON, say, table } from "./api.js";
import { intervalBar, lineChart, money, percent, resizeWith, valueBar } from "./charts.js";

const DAY_MS = 86_400_000;
const MAX_DAILY_DAYS = 92; // what /v1/kpis?by=day reads at most
const form = document.getElementById("range-form");
const fromInput = document.getElementById("range-from");
const toInput = document.getElementById("range-to");
const status = document.getElementById("offers-status");
const daily = document.getElementById("daily");
let chart = null;

function utcDay(ms) {
  return new Date(ms).toISOString().slice(0, 10);
}

function daysIn(first, last) {
  return Math.round((Date.parse(last) - Date.parse(first)) / DAY_MS) + 1;
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const range = { from: fromInput.value, to: toInput.value };
  if (!range.from || !range.to) return say(status, "Choose both days.", "error");
  if (range.to < range.from) return say(status, "The last day is before the first: choose them the other way round.", "error");
  history.pushState(range, "", `?${new URLSearchParams(range)}`);
  load(range);
});

async function load({ from, to }) {
  fromInput.value = from;
  toInput.value = to;
  say(status, `Loading ${from} to ${to}…`);
  const byDay = daysIn(from, to) <= MAX_DAILY_DAYS;
  let kpis;
  try {
    kpis = await getJSON(`/v1/kpis?${new URLSearchParams({ from, to, ...(byDay ? { by: "day" } : {}) })}`);
  } catch (error) {
    return say(status, `The figures could not be read: ${error.message}`, "error", error);
  }
  const offers = Object.entries(kpis.offers ?? {});
  showTotals(offers);
  showOffers(offers);
  drawDaily(kpis.by_day ?? [], from, to, byDay);
  const n = daysIn(from, to);
  say(status, `${from} to ${to} (${n} day${n === 1 ? "" : "s"}, UTC): ${offers.length} offers.`, "ok");
}

function sum(offers, figure) {
  return offers.reduce((total, [, o]) => total + (o[figure] ?? 0), 0);
}

function showTotals(offers) {
  const impressions = sum(offers, "impressions");
  facts(document.getElementById("offer-totals"), [
    ["Impressions", impressions],
    ["Clicks", sum(offers, "clicks")],
    ["Click-through rate", percent(impressions ? sum(offers, "clicks") / impressions : null)],
    ["Conversions", sum(offers, "converted")],
    ["Revenue", money(sum(offers, "revenue"))],
    ["Discount cost", money(sum(offers, "discount_cost"))],
  ]);
}

function budgetCell(budget) {
  if (!budget) return "no budget";
  const share = budget.amount > 0 ? budget.spent / budget.amount : 0;
  const words = `${money(budget.spent)} of ${money(budget.amount)} ${budget.per === "day" ? "today" : "for the campaign"} (${percent(share)})`;
  return el("span", { class: "burn" }, valueBar(budget.spent, budget.amount, `Budget spent: ${words}`,
    share >= 1 ? "#a4161a" : "#1f5fbf"), el("span", {}, words));
}

function showOffers(offers) {
  const rows = [...offers]
    .sort(([a, x], [b, y]) => (y.impressions - x.impressions) || a.localeCompare(b))
    .map(([id, o]) => [id, o.impressions, o.clicks, percent(o.click_through_rate), o.converted,
      percent(o.conversion_rate), money(o.revenue), money(o.discount_cost),
      o.roi == null ? "—" : `${o.roi.toFixed(2)}×`, budgetCell(o.budget)]);
  document.getElementById("per-offer").replaceChildren(table(
    "Each offer over the range, most shown first (conversions: people who bought within 7 days of seeing it)",
    ["Offer", "Impressions", "Clicks", "CTR", "Conversions", "Conversion rate", "Revenue", "Discount cost", "ROI", "Budget burn"],
    rows));
}

function drawDaily(days, from, to, perDay) {
  if (chart) {
    chart.plot.destroy();
    chart.figure.remove();
    chart = null;
  }
  daily.replaceChildren();
  if (!perDay) {
    daily.append(el("p", { class: "empty" }, `The chart draws ranges of up to ${MAX_DAILY_DAYS} days: choose a shorter one to see each day.`));
    return;
  }
  const x = days.map((d) => Date.parse(`${d.day}T00:00:00Z`) / 1000);
  const impressions = days.map((d) => Object.values(d.offers).reduce((t, o) => t + o.impressions, 0));
  const conversions = days.map((d) => Object.values(d.offers).reduce((t, o) => t + o.converted, 0));
  const total = (values) => values.reduce((a, b) => a + b, 0);
  chart = lineChart(daily, {
    id: "offers-daily", title: `Impressions and conversions per UTC day, ${from} to ${to}, every offer`,
    description: `Impressions and conversions per day from ${from} to ${to}: ${total(impressions)} impressions and ${total(conversions)} conversions in all; the last day ${impressions.at(-1) ?? 0} impressions and ${conversions.at(-1) ?? 0} conversions.`,
    x, fromZero: true, utc: true,
    series: [{ label: "impressions", values: impressions }, { label: "conversions", values: conversions, dash: [6, 3] }],
  });
}

// -- the learnt propensities ---------------------------------------------------

async function loadModel() {
  const box = document.getElementById("model");
  let model;
  try {
    model = await getJSON("/v1/model");
  } catch (error) {
    const line = el("p", { class: "status error", role: "status" });
    say(line, `The learnt model could not be read: ${error.message}`, "error", error);
    return box.replaceChildren(line);
  }
  const offers = Object.entries(model.offers ?? {});
  if (!model.learning || !offers.length) {
    return box.replaceChildren(el("p", { class: "empty" }, "No placement is filled by expected value in the catalog in force, or nothing is learnt yet."));
  }
  const rows = offers.flatMap(([offer, learnt]) => [
    ...(learnt.prior ? [[offer, "prior", learnt.prior, null, null]] : []),
    ...Object.entries(learnt.buckets ?? {}).map(([bucket, f]) => [offer, bucket, f, f.impressions, f.rewards]),
  ]);
  const max = Math.max(0.05, ...rows.map(([, , f]) => f.ci95?.[1] ?? 0));
  const scale = Math.min(1, Math.ceil(max * 20) / 20);
  const drawn = rows.map(([offer, bucket, f, impressions, rewards]) => {
    const [low, high] = f.ci95 ?? [f.mean, f.mean];
    const words = `${offer}, ${bucket}: ${percent(f.mean)}, 95 % interval ${percent(low)} to ${percent(high)}`;
    return [offer, bucket, percent(f.mean), `${percent(low)} – ${percent(high)}`,
      intervalBar({ low, high, estimate: f.mean, min: 0, max: scale, label: words }),
      impressions == null ? "—" : impressions, rewards == null ? "—" : rewards];
  });
  const learning = model.learning;
  const wrap = table(`Learnt ${learning.reward} rate per offer and bucket (interval scale 0 to ${percent(scale)}; faded counts)`,
    ["Offer", "Bucket", "Propensity", "95 % interval", "Interval, drawn", "Impressions", "Rewards"], drawn);
  wrap.id = "model-intervals";
  wrap.dataset.points = String(drawn.length);
  box.replaceChildren(el("p", { class: "small" },
    `Buckets by ${learning.buckets.join(", ") || "nothing"}; half-life ${Math.round(learning.half_life_ms / 3_600_000)} h; ${percent(learning.exploration)} of decisions explore. Snapshot ${model.age_ms} ms old.`), wrap);
}

function rangeOfAddress() {
  const query = new URLSearchParams(location.search);
  const to = query.get("to") ?? utcDay(Date.now());
  const from = query.get("from") ?? utcDay(Date.parse(to) - 6 * DAY_MS);
  return { from, to };
}

window.addEventListener("popstate", () => load(rangeOfAddress()));
resizeWith(daily, () => (chart ? [chart] : []));
load(rangeOfAddress());
loadModel();
