// Benchmarks: GET /v1/ops/benchmarks (every run of benchmarks/results/history.jsonl,
// oldest first) drawn per benchmark: one chart per figure with a target or a
// floor, x the run's date, the target as a flat line and the floor figure of
// the same runs as a second series; quick runs are marked with points of their own.

import { el, facts, getJSON, say, table } from "./api.js";
import { figure as shown, lineChart, resizeWith } from "./charts.js";

const status = document.getElementById("benchmarks-status");
const box = document.getElementById("benchmarks");
const charts = [];
const SYMBOLS = { "<=": "≤", ">=": "≥", "<": "<", ">": ">", "==": "=" };

function numeric(value) {
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

function machine(m) {
  if (!m) return "—";
  return [m.cpu, m.cores && `${m.cores} cores`, m.arch, m.python && `Python ${m.python}`, m.host && `host ${m.host}`]
    .filter(Boolean).join(", ");
}

function benchmarkView(name, runs) {
  const latest = runs.at(-1);
  const id = name.replace(/[^a-zA-Z0-9_-]/g, "-");
  const section = el("section", { class: "benchmark", id: `benchmark-${id}`, "aria-labelledby": `benchmark-${id}-heading` },
    el("h2", { id: `benchmark-${id}-heading` }, name));
  const latestFacts = el("dl", { class: "figures" });
  facts(latestFacts, [
    ["Latest run", `${new Date(latest.date).toLocaleString()}${latest.quick ? " (quick)" : ""}`],
    ["Commit", latest.commit],
    ["Machine", machine(latest.machine)],
    ["Runs", `${runs.length} (${runs.filter((r) => r.quick).length} quick)`],
  ]);
  section.append(latestFacts);
  const chartsBox = el("div", { class: "charts" });
  section.append(chartsBox);
  const x = runs.map((r) => Date.parse(r.date) / 1000);
  const figures = [...new Set(runs.flatMap((r) => [...Object.keys(r.targets ?? {}), ...Object.keys(r.floors ?? {})]))];
  for (const figure of figures.sort()) {
    const values = runs.map((r) => numeric(r.figures?.[figure]));
    if (values.every((v) => v === null)) continue;
    const target = [...runs].reverse().map((r) => r.targets?.[figure]).find(Boolean);
    const floorName = [...runs].reverse().map((r) => r.floors?.[figure]).find(Boolean);
    const series = [{ label: figure, values }];
    if (floorName) series.push({ label: `floor: ${floorName}`, values: runs.map((r) => numeric(r.figures?.[floorName])), dash: [6, 3], reference: true });
    if (target) series.push({ label: `target ${SYMBOLS[target[0]] ?? target[0]} ${target[1]}`, values: runs.map(() => target[1]), colour: "#1b1f24", dash: [10, 5], reference: true });
    if (runs.some((r) => r.quick)) {
      series.push({ label: "quick run", values: runs.map((r, i) => (r.quick ? values[i] : null)), colour: "#8a5a00", pointsOnly: true, reference: true });
    }
    const last = values.filter((v) => v !== null).at(-1);
    const meets = target ? compare(last, target) : null;
    const words = `${figure} over ${runs.length} run${runs.length === 1 ? "" : "s"}, latest ${shown(last)}`
      + (target ? `, target ${SYMBOLS[target[0]] ?? target[0]} ${target[1]} (${meets ? "met" : "missed"})` : "")
      + (floorName ? `, floor ${floorName} ${shown(numeric(latest.figures?.[floorName]))}` : "") + ".";
    const chart = lineChart(chartsBox, { id: `${id}-${figure}`, title: `${figure}${target ? ` (target ${SYMBOLS[target[0]] ?? target[0]} ${target[1]})` : ""}`, description: words, x, series, height: 180, xLabel: "run" });
    if (target) chart.figure.classList.add(meets ? "meets" : "misses");
    chart.figure.append(el("p", { class: meets === false ? "small missed" : "small" }, words));
    charts.push(chart);
  }
  section.append(table(`Runs of ${name}, oldest first`, ["Date", "Commit", "Quick", "Machine"],
    runs.map((r) => [r.date, r.commit, r.quick ? "quick" : "full", machine(r.machine)])));
  return section;
}

function compare(value, [op, target]) {
  if (value == null) return false;
  return { "<=": value <= target, ">=": value >= target, "<": value < target, ">": value > target, "==": value === target }[op] ?? false;
}

async function load() {
  let answer;
  try {
    answer = await getJSON("/v1/ops/benchmarks");
  } catch (error) {
    return say(status, `The benchmark history could not be read: ${error.message}`, "error", error);
  }
  const byName = new Map();
  for (const run of [...answer.runs].sort((a, b) => Date.parse(a.date) - Date.parse(b.date))) {
    if (!byName.has(run.benchmark)) byName.set(run.benchmark, []);
    byName.get(run.benchmark).push(run);
  }
  if (!byName.size) return say(status, `No benchmark has been run yet (the history is ${answer.path}).`);
  box.replaceChildren(...[...byName].sort(([a], [b]) => a.localeCompare(b)).map(([name, runs]) => benchmarkView(name, runs)));
  say(status, `${answer.runs.length} runs of ${byName.size} benchmarks, from ${answer.path}.`, "ok");
}

resizeWith(box, () => charts);
load();
