// Experiments and journeys: GET /v1/experiments, then GET /v1/experiments/{id}
// for each (arms, each arm's effect against the control with its always-valid
// 95 % interval, the sample-ratio check), and GET /v1/kpis for each journey's
// funnel (entered, waiting per step, sent, opened, clicked, converted, how runs
// ended, and the hold-out's uplift).

import { el, getJSON, say, show, table } from "./api.js";
import { intervalBar, money, percent, valueBar } from "./charts.js";

const status = document.getElementById("experiments-status");

async function load() {
  say(status, "Loading…");
  const [experiments, kpis] = await Promise.allSettled([loadExperiments(), getJSON("/v1/kpis")]);
  const failed = [experiments, kpis].find((r) => r.status === "rejected");
  if (kpis.status === "fulfilled") showJourneys(kpis.value.journeys ?? {});
  if (failed) return say(status, `Not everything could be read: ${failed.reason.message}`, "error", failed.reason);
  say(status, `${experiments.value} experiment${experiments.value === 1 ? "" : "s"} and ${Object.keys(kpis.value.journeys ?? {}).length} journeys in the catalog in force.`, "ok");
}

// -- experiments -------------------------------------------------------------------

async function loadExperiments() {
  const box = document.getElementById("experiments");
  const { experiments } = await getJSON("/v1/experiments");
  if (!experiments.length) {
    box.replaceChildren(el("p", { class: "empty" }, "The catalog in force runs no experiment."));
    return 0;
  }
  const reports = await Promise.all(experiments.map((e) => getJSON(`/v1/experiments/${encodeURIComponent(e.id)}`)));
  box.replaceChildren(...reports.map(experimentView));
  return reports.length;
}

function srmLine(srm) {
  if (srm.p_value == null) {
    return el("p", { class: "srm" }, "Sample ratio: nobody exposed yet, nothing to check.");
  }
  if (srm.mismatch) {
    return el("p", { class: "srm mismatch", role: "alert" }, el("strong", {}, "Sample ratio mismatch"),
      ` (p = ${srm.p_value}): people were not split as declared. Find why before trusting the effects.`);
  }
  return el("p", { class: "srm ok" }, `Sample ratio as declared (p = ${srm.p_value}).`);
}

function experimentView(report) {
  const metric = report.metric === "revenue" ? "revenue per exposure" : `${report.metric} rate`;
  const arms = Object.entries(report.arms).map(([arm, a]) => [
    arm + (arm === report.control ? " (control)" : ""), percent(report.shares?.[arm]), a.exposures, a.clicks,
    a.conversions, report.metric === "revenue" ? money(a.revenue_per_exposure) : percent(a.rate),
    money(a.revenue), money(a.discount_cost)]);
  const effects = Object.entries(report.effects);
  const bounds = effects.flatMap(([, e]) => e.ci95 ?? []).map(Math.abs);
  // A difference of rates lies within ±1 (±100 points), however wide the interval early on.
  const proportion = report.metric !== "revenue";
  const reach = Math.min(Math.max(0.01, ...bounds) * 1.1, proportion ? 1 : Infinity);
  const format = proportion ? (v) => `${v >= 0 ? "+" : ""}${(v * 100).toFixed(2)} pts` : (v) => money(v);
  const magnitude = proportion ? `${(reach * 100).toFixed(2)} pts` : money(reach);
  const drawnRows = effects.filter(([, e]) => e.ci95);
  const effectRows = effects.map(([arm, e]) => {
    if (!e.ci95) return [arm, `vs ${e.vs}`, "—", "—", "not enough exposures in both arms yet", "—"];
    const [low, high] = e.ci95;
    const words = `${arm} against ${e.vs}: ${format(e.difference)}, 95 % interval ${format(low)} to ${format(high)}${low > 0 ? ", better" : high < 0 ? ", worse" : ", not told apart from no difference"}`;
    return [arm, `vs ${e.vs}`, format(e.difference), `${format(low)} to ${format(high)}`,
      intervalBar({ low, high, estimate: e.difference, min: -reach, max: reach, zero: 0, label: words }),
      show(e.p_always_valid)];
  });
  const effectsTable = table(`Effect on the ${metric} against the control (dashed line: no difference; drawn on ±${magnitude})`,
    ["Arm", "Against", "Difference", "95 % interval", "Interval, drawn", "p (always valid)"], effectRows);
  effectsTable.classList.add("effects");
  effectsTable.dataset.points = String(drawnRows.length);
  return el("section", { class: "experiment", id: `experiment-${report.id}`, "aria-labelledby": `experiment-${report.id}-heading` },
    el("h3", { id: `experiment-${report.id}-heading` }, report.id),
    el("p", { class: "small" }, `On ${report.placement}; primary metric: ${metric}; control: ${report.control}.`),
    srmLine(report.srm),
    table("Arms", ["Arm", "Share", "Exposures", "Clicks", "Conversions", metric, "Revenue", "Discount cost"], arms),
    effectsTable);
}

// -- journeys ----------------------------------------------------------------------

function showJourneys(journeys) {
  const box = document.getElementById("journeys");
  const all = Object.entries(journeys);
  const started = all.filter(([, j]) => j.entered || j.held_out);
  const idle = all.filter(([, j]) => !j.entered && !j.held_out).map(([id]) => id);
  box.replaceChildren(...started.map(([id, j]) => journeyView(id, j)),
    idle.length ? el("p", { class: "empty", id: "idle-journeys" }, `Nobody has entered ${idle.join(", ")} yet.`) : "");
  if (!started.length && !idle.length) box.replaceChildren(el("p", { class: "empty" }, "The catalog in force has no journey."));
}

function journeyView(id, j) {
  const waitingSteps = Object.entries(j.waiting ?? {});
  const waiting = waitingSteps.reduce((total, [, n]) => total + n, 0);
  const stages = [
    ["Entered", j.entered, "people"],
    ["Waiting now", waiting, waitingSteps.length ? waitingSteps.map(([step, n]) => `step ${step}: ${n}`).join(", ") : "none"],
    ["Sent", j.sent, Object.entries(j.sent_by_channel ?? {}).map(([c, n]) => `${c}: ${n}`).join(", ") || "messages"],
    ["Opened", j.opened, `emails, ${percent(j.open_rate)} of those sent`],
    ["Clicked", j.clicked, `emails, ${percent(j.click_rate)} of those sent`],
    ["Converted", j.converted, `people, ${percent(j.conversion_rate)} of those entered`],
  ];
  const top = Math.max(1, ...stages.map(([, n]) => n));
  const rows = stages.map(([stage, n, detail]) => [stage, n, valueBar(n, top, `${stage}: ${n}`), detail]);
  const funnel = table(`${id}: the funnel`, ["Stage", "Count", "Drawn", "Detail"], rows);
  funnel.classList.add("funnel");
  funnel.dataset.points = String(stages.filter(([, n]) => n > 0).length);
  const uplift = j.held_out
    ? `Hold-out: ${j.held_out} people held out, ${j.converted_control} converted (${percent(j.conversion_rate_control)}); uplift ${j.uplift == null ? "—" : `${j.uplift >= 0 ? "+" : ""}${(j.uplift * 100).toFixed(2)} points`}.`
    : "No hold-out: this journey holds nobody out, so its uplift cannot be measured.";
  return el("section", { class: "journey", id: `journey-${id}`, "aria-labelledby": `journey-${id}-heading` },
    el("h3", { id: `journey-${id}-heading` }, id),
    funnel,
    el("p", { class: "endings" }, `Runs ended: ${j.finished} finished the last step, ${j.exited} left by an exit, ${j.ended} ended otherwise.`),
    el("p", { class: "uplift" }, uplift));
}

load();
