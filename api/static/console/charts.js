// What the Offers, Experiments and Benchmarks pages draw: uPlot line charts in
// a figure, and intervals and bars as SVG built from attributes (the CSP allows
// no inline style). Every chart says what it drew: its box carries the uPlot
// instance (`.plot`), `data-points` (x values drawn) and `data-sum` (the sum of
// its measured series), and an aria-label with its figures in words.

import { el } from "./api.js";

// At least 3:1 contrast on white, told apart by dash as well.
export const COLOURS = ["#1f5fbf", "#b3261e", "#2e7d32", "#7b3fa0", "#8a5a00", "#00695c"];
const SVG = "http://www.w3.org/2000/svg";

function chartWidth(container) {
  return Math.max(320, Math.min(container.clientWidth || 900, 1100));
}

// spec: {id, title, description, x: [unix s], series: [{label, values, colour?, dash?,
// pointsOnly?, reference? (a target or a floor: left out of data-sum)}], unit?, height?}
export function lineChart(container, spec) {
  const box = el("div", { class: "chart", role: "img", "aria-label": spec.description });
  const figure = el("figure", { id: `chart-${spec.id}` }, el("figcaption", {}, spec.title), box);
  container.append(figure);
  const series = [{ label: spec.xLabel ?? "day" }, ...spec.series.map((s, i) => ({
    label: s.label,
    stroke: s.colour ?? COLOURS[i % COLOURS.length],
    width: s.pointsOnly ? 0 : 2,
    dash: s.dash,
    paths: s.pointsOnly ? () => null : undefined,
    points: s.pointsOnly ? { show: true, size: 9, width: 2, fill: "#ffffff" } : undefined,
    value: (_, v) => (v == null ? "—" : `${figure(v)}${spec.unit ? ` ${spec.unit}` : ""}`),
  }))];
  const options = {
    width: chartWidth(container), height: spec.height ?? 220, series,
    axes: [{}, { label: spec.unit || undefined, size: 64, values: (_, splits) => splits.map(compact) }],
    legend: { live: true },
    ...(spec.utc ? { tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC") } : {}),
    scales: {
      // One x value (a single day, a single run): half a day either side (uPlot would pad it by years).
      x: { time: true, range: (_, min, max) => (spec.x.length === 1 ? [spec.x[0] - 43_200, spec.x[0] + 43_200] : [min, max]) },
      ...(spec.fromZero ? { y: { range: (_, min, max) => [0, max > 0 ? max * 1.1 : 1] } } : {}),
    },
  };
  const plot = new uPlot(options, [spec.x, ...spec.series.map((s) => s.values)], box);
  box.plot = plot;
  box.dataset.points = String(plot.data[0].length);
  box.dataset.series = spec.series.map((s) => s.label).join("|");
  box.dataset.sum = String(plot.data.slice(1).reduce((sum, values, i) =>
    spec.series[i].reference ? sum : sum + values.reduce((a, v) => a + (Number.isFinite(v) ? v : 0), 0), 0));
  return { plot, figure, box };
}

export function resizeWith(container, charts) {
  window.addEventListener("resize", () => {
    for (const { plot } of charts()) plot.setSize({ width: chartWidth(container), height: plot.height });
  });
}

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  node.append(...children);
  return node;
}

const WIDTH = 240;
const HEIGHT = 22;
const PAD = 6;

// A 95 % interval on the scale [min, max]: a bar from low to high, a dot at the
// estimate, and a dashed line at `zero` when it is on the scale.
export function intervalBar({ low, high, estimate, min, max, zero = null, label }) {
  const x = (v) => PAD + ((Math.min(Math.max(v, min), max) - min) / (max - min || 1)) * (WIDTH - 2 * PAD);
  const parts = [svg("line", { x1: PAD, x2: WIDTH - PAD, y1: HEIGHT / 2, y2: HEIGHT / 2, stroke: "#c9d0d8" })];
  if (zero !== null && zero >= min && zero <= max) {
    parts.push(svg("line", { x1: x(zero), x2: x(zero), y1: 1, y2: HEIGHT - 1, stroke: "#1b1f24", "stroke-dasharray": "3 2" }));
  }
  parts.push(svg("rect", { x: x(low), y: HEIGHT / 2 - 4, width: Math.max(x(high) - x(low), 2), height: 8, fill: "#1f5fbf", rx: 2 }));
  if (estimate != null) parts.push(svg("circle", { cx: x(estimate), cy: HEIGHT / 2, r: 4.5, fill: "#1b1f24" }));
  return svg("svg", { class: "interval", width: WIDTH, height: HEIGHT, viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": label },
    svg("title", {}, label), ...parts);
}

// A horizontal bar: `value` of `max`, with its figure in words.
export function valueBar(value, max, label, colour = "#1f5fbf") {
  const share = max > 0 ? Math.min(value / max, 1) : 0;
  return svg("svg", { class: "bar", width: WIDTH, height: 14, viewBox: `0 0 ${WIDTH} 14`, role: "img", "aria-label": label },
    svg("title", {}, label),
    svg("rect", { x: 0, y: 1, width: WIDTH, height: 12, fill: "#f4f6f8", stroke: "#c9d0d8" }),
    svg("rect", { x: 0, y: 1, width: Math.max(share * WIDTH, value > 0 ? 2 : 0), height: 12, fill: colour }));
}

// 1234567 -> "1.23M": axis labels that fit their axis.
export function compact(value) {
  return value == null ? "" : Number(value).toLocaleString(undefined, { notation: "compact", maximumSignificantDigits: 3 });
}

// A measured figure with four significant digits at most: 135676.1187 -> 135700, 0.82237 -> 0.8224.
export function figure(value) {
  return value == null ? "—" : String(+Number(value).toPrecision(4));
}

export function percent(rate) {
  return rate == null ? "—" : `${(rate * 100).toFixed(rate < 0.1 ? 2 : 1)} %`;
}

export function money(amount) {
  return amount == null ? "—" : Number(amount).toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
}
