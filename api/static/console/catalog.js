// Catalog: the version in force and its history, a diff between any two
// versions, validating an edit (every problem at its line), publishing it with
// a message, and restoring an earlier version. Reads need the read scope;
// publishing and restoring the admin scope: the server says no, and this page
// shows its reason.

import { call, el, facts, getJSON, say, when } from "./api.js";

const status = document.getElementById("catalog-status");
const text = document.getElementById("catalog-text");
const message = document.getElementById("publish-message");
const problemsBox = document.getElementById("problems-box");
const problemList = document.getElementById("problems");
const inForce = document.getElementById("in-force");
const versionsBody = document.querySelector("#versions tbody");
const selects = ["diff-from", "diff-to", "restore-version"].map((id) => document.getElementById(id));
const diff = document.getElementById("diff");
const YAML = "application/yaml";

async function load() {
  const failures = [];
  let version = null;
  let digest = null;
  try {
    const response = await call("GET", "/v1/admin/catalog");
    version = response.headers.get("X-Attimo-Catalog-Version");
    digest = response.headers.get("X-Attimo-Catalog-Digest");
    text.value = await response.text();
  } catch (error) {
    failures.push(`The catalog in force could not be read: ${error.message}`);
  }
  let history = null;
  try {
    history = await getJSON("/v1/admin/catalog/versions?limit=50");
  } catch (error) {
    failures.push(`The history could not be read: ${error.message}`);
  }
  const current = history?.versions.find((v) => v.n === history.in_force);
  facts(inForce, [
    ["Version", version ?? history?.in_force],
    ["Digest", digest ?? current?.digest],
    ["Published", current ? when(current.at) : null],
    ["By", current?.author],
    ["Message", current?.message],
  ]);
  if (history) showHistory(history);
  if (failures.length) say(status, failures.join(" "), "error");
  else say(status, `Version ${version ?? history.in_force} is in force.`, "ok");
}

function showHistory({ in_force: inForceN, versions }) {
  versionsBody.replaceChildren(...versions.map((v) => el("tr", v.n === inForceN ? { class: "in-force" } : {},
    el("th", { scope: "row" }, `${v.n}${v.n === inForceN ? " (in force)" : ""}`),
    el("td", {}, when(v.at)),
    el("td", {}, v.author ?? "—"),
    el("td", {}, v.message || "—"),
    el("td", {}, v.offers), el("td", {}, v.segments), el("td", {}, v.journeys))));
  for (const select of selects) {
    const keep = select.value;
    select.replaceChildren(...versions.map((v) => el("option", { value: v.n }, `${v.n}${v.message ? `: ${v.message}` : ""}`)));
    if (keep) select.value = keep;
  }
  // By default compare the one before with the one in force.
  const [from, to] = selects;
  if (!from.dataset.touched && versions.length > 1) {
    to.value = String(inForceN);
    from.value = String(versions.find((v) => v.n < inForceN)?.n ?? versions[versions.length - 1].n);
  }
}
selects.forEach((select) => select.addEventListener("change", () => { select.dataset.touched = "1"; }));

function showProblems(problems) {
  problemList.replaceChildren(...problems.map((problem) => {
    const where = problem.line ? `Line ${problem.line}` : "The whole catalog";
    const item = el("li", {}, el("strong", {}, where), ` — ${problem.path ? `${problem.path}: ` : ""}${problem.reason}`);
    if (problem.line) {
      const go = el("button", { type: "button", class: "link" }, `Go to line ${problem.line}`);
      go.addEventListener("click", () => goToLine(problem.line));
      item.append(" ", go);
    }
    return item;
  }));
  problemsBox.hidden = problems.length === 0;
}

function goToLine(line) {
  const lines = text.value.split("\n");
  const start = lines.slice(0, line - 1).reduce((sum, l) => sum + l.length + 1, 0);
  const end = start + (lines[line - 1] ?? "").length;
  text.focus();
  text.setSelectionRange(start, end);
  const height = parseFloat(getComputedStyle(text).lineHeight) || 18;
  text.scrollTop = Math.max(0, (line - 3) * height);
}

// A 422 with problems shows them; any other refusal is said in the status line.
function refused(error, doing) {
  const problems = error.body?.problems;
  if (error.status === 422 && Array.isArray(problems)) {
    showProblems(problems);
    say(status, `${doing}: the catalog has ${problems.length} problem${problems.length === 1 ? "" : "s"}, listed below at their lines.`, "error");
  } else {
    say(status, `${doing}: ${error.message}`, "error", error);
  }
}

document.getElementById("validate").addEventListener("click", async () => {
  say(status, "Validating…");
  try {
    const result = await (await call("POST", "/v1/admin/catalog/validate", { text: text.value, contentType: YAML })).json();
    showProblems([]);
    say(status, `Valid: ${result.offers} offers, ${result.segments} segments, placements ${(result.placements ?? []).join(", ")}.`, "ok");
  } catch (error) {
    refused(error, "Not valid");
  }
});

document.getElementById("edit-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!message.value.trim()) {
    say(status, "Write a message for the history first: what changes and why.", "error");
    return message.focus();
  }
  say(status, "Publishing…");
  try {
    const query = new URLSearchParams({ message: message.value.trim() });
    // The server validates before anything changes: a catalog with problems is refused whole.
    const result = await (await call("POST", `/v1/admin/catalog?${query}`, { text: text.value, contentType: YAML })).json();
    showProblems([]);
    message.value = "";
    await load();
    say(status, `Published: version ${result.version} is in force.`, "ok");
  } catch (error) {
    refused(error, "Not published");
  }
});

document.getElementById("diff-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const [from, to] = selects;
  try {
    const result = await getJSON(`/v1/admin/catalog/diff?${new URLSearchParams({ from: from.value, to: to.value })}`);
    const lines = result.diff ? result.diff.split("\n") : [`Versions ${from.value} and ${to.value} are the same.`];
    diff.replaceChildren(...lines.map((line) => el("span", { class: lineKind(line) }, `${line}\n`)));
    diff.hidden = false;
  } catch (error) {
    say(status, `No differences shown: ${error.message}`, "error", error);
  }
});

function lineKind(line) {
  if (line.startsWith("+++") || line.startsWith("---")) return "file";
  if (line.startsWith("@@")) return "hunk";
  if (line.startsWith("+")) return "added";
  if (line.startsWith("-")) return "removed";
  return "same";
}

document.getElementById("restore-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const n = selects[2].value;
  const note = document.getElementById("restore-message").value.trim() || `restore version ${n}`;
  say(status, `Restoring version ${n}…`);
  try {
    const query = new URLSearchParams({ message: note });
    const result = await (await call("POST", `/v1/admin/catalog/versions/${encodeURIComponent(n)}/restore?${query}`)).json();
    await load();
    say(status, `Restored: version ${n} is in force again as version ${result.version}.`, "ok");
  } catch (error) {
    refused(error, "Not restored");
  }
});

load();
