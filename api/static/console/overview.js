// Overview: GET /v1/ops/overview?minutes=60 drawn with uPlot (vendor/), redrawn
// every 5 seconds without reloading the page. The answer's shape:
// {"step_s", "t": [ms…], "endpoints": {"decide": {"rate", "p50", "p95", "p99"}, …},
//  "fallbacks": […], "redis_errors": […], "events_applied": […],
//  "thresholds": {"decide_p99_ms": …}, "now": {…}}.
// A server without the endpoint (404) gets a plain "not available" message.

import { ApiError, el, getJSON, say, show } from "./api.js";

const REFRESH_MS = 5000;
const status = document.getElementById("overview-status");
const chartsBox = document.getElementById("charts");
const nowSection = document.getElementById("now-section");
const nowList = document.getElementById("now");
// Colours with at least 3:1 contrast on white, told apart by dash as well.
const COLOURS = ["#1f5fbf", "#b3261e", "#2e7d32", "#7b3fa0", "#8a5a00", "#00695c"];
const charts = new Map(); // id -> {plot, figure, keys}
let timer = null;

function seconds(t) {
  return t.map((ms) => ms / 1000);
}

// The charts this answer can fill: [{id, title, unit, series: [[label, values]], threshold?}].
function chartsOf(answer) {
  const endpoints = Object.entries(answer.endpoints ?? {});
  const decide = answer.endpoints?.decide;
  const list = [];
  if (decide) {
    list.push({
      id: "decide-latency", title: "Decide latency (ms)", unit: "ms",
      series: ["p50", "p95", "p99"].filter((q) => decide[q]).map((q) => [`decide ${q}`, decide[q]]),
      threshold: answer.thresholds?.decide_p99_ms,
    });
  }
  const others = endpoints.filter(([name]) => name !== "decide");
  if (others.length) {
    list.push({
      id: "latency", title: "p99 latency of the other endpoints (ms)", unit: "ms",
      series: others.filter(([, e]) => e.p99).map(([name, e]) => [`${name} p99`, e.p99]),
    });
  }
  if (endpoints.length) {
    list.push({
      id: "rates", title: "Requests per second", unit: "/s",
      series: endpoints.filter(([, e]) => e.rate).map(([name, e]) => [name, e.rate]),
    });
  }
  const health = [["fallbacks", answer.fallbacks], ["Redis errors", answer.redis_errors]].filter(([, v]) => v);
  if (health.length) list.push({ id: "health", title: "Decide fallbacks and Redis errors per second", unit: "", series: health });
  if (answer.events_applied) {
    list.push({ id: "events", title: "Events applied per second", unit: "", series: [["events applied", answer.events_applied]] });
  }
  return list;
}

function width() {
  return Math.max(320, Math.min(chartsBox.clientWidth || 900, 1100));
}

function options(spec) {
  const series = [{ label: "time" }, ...spec.series.map(([label], i) => ({
    label, stroke: COLOURS[i % COLOURS.length], width: 2, dash: i ? [8 - 2 * i, 3] : undefined,
    value: (_, v) => (v == null ? "—" : `${+v.toFixed(2)}${spec.unit ? ` ${spec.unit}` : ""}`),
  }))];
  if (spec.threshold != null) {
    series.push({ label: "p99 threshold", stroke: "#1b1f24", width: 1.5, dash: [10, 5], points: { show: false } });
  }
  return {
    width: width(), height: 220,
    series,
    axes: [{}, { label: spec.unit || undefined, size: 60 }],
    legend: { live: true },
    scales: { x: { time: true } },
  };
}

function dataOf(spec, t) {
  const data = [seconds(t), ...spec.series.map(([, values]) => values)];
  if (spec.threshold != null) data.push(t.map(() => spec.threshold));
  return data;
}

function summary(spec) {
  const latest = spec.series.map(([label, values]) => `${label} ${show(values.at(-1))}${spec.unit ? ` ${spec.unit}` : ""}`);
  if (spec.threshold != null) latest.push(`threshold ${spec.threshold} ms`);
  return `${spec.title}. Latest: ${latest.join(", ")}.`;
}

function draw(answer) {
  const t = answer.t ?? [];
  const specs = chartsOf(answer);
  for (const spec of specs) {
    const key = [spec.threshold != null, ...spec.series.map(([label]) => label)].join("|");
    let chart = charts.get(spec.id);
    if (chart && chart.key !== key) {
      chart.plot.destroy();
      chart.figure.remove();
      chart = null;
    }
    if (!chart) {
      const canvasBox = el("div", { class: "chart", role: "img", "aria-label": spec.title });
      const figure = el("figure", { id: `chart-${spec.id}` }, el("figcaption", {}, spec.title), canvasBox);
      chartsBox.append(figure);
      chart = { plot: new uPlot(options(spec), dataOf(spec, t), canvasBox), figure, key, canvasBox };
      charts.set(spec.id, chart);
    } else {
      chart.plot.setData(dataOf(spec, t));
    }
    chart.canvasBox.setAttribute("aria-label", summary(spec));
    // How many values are drawn (not the empty slots, nor the threshold): the tests read it.
    chart.canvasBox.dataset.points = String(spec.series.reduce(
      (n, [, values]) => n + values.filter((v) => v != null && v > 0).length, 0));
  }
  for (const [id, chart] of charts) {
    if (!specs.some((s) => s.id === id)) {
      chart.plot.destroy();
      chart.figure.remove();
      charts.delete(id);
    }
  }
  const now = nowFigures(answer.now ?? {});
  nowList.replaceChildren(...now.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, show(v))]));
  nowSection.hidden = now.length === 0;
}

// {"redis": {"ping_ms": 0.2}, "dead_letters": 3} -> [["redis ping ms", 0.2], ["dead letters", 3]]
function nowFigures(now, prefix = "") {
  return Object.entries(now).flatMap(([key, value]) => {
    const name = `${prefix}${key.replaceAll("_", " ")}`;
    return value && typeof value === "object" && !Array.isArray(value) ? nowFigures(value, `${name} `) : [[name, value]];
  });
}

async function refresh() {
  timer = null;
  try {
    const answer = await getJSON("/v1/ops/overview?minutes=60");
    draw(answer);
    say(status, `Last hour, ${answer.step_s ?? "?"} s a step. Updated ${new Date().toLocaleTimeString()}.`, "ok");
  } catch (error) {
    if (error instanceof ApiError && (error.status === 404 || error.status === 405)) {
      say(status, "The operations overview is not available on this server: it has no /v1/ops/overview endpoint. "
        + "Upgrade Attimo to see request rates, latency and errors here.", "error");
      return; // nothing to refresh
    }
    say(status, `The overview could not be read: ${error.message}`, "error", error);
    if (error instanceof ApiError && error.status === 401) return;
  }
  schedule();
}

function schedule() {
  if (timer === null) timer = setTimeout(refresh, REFRESH_MS);
}

window.addEventListener("resize", () => {
  for (const chart of charts.values()) chart.plot.setSize({ width: width(), height: 220 });
});

refresh();
