// People: find someone by id (GET /v1/people/{id}) or email (GET /v1/people?email=),
// show what the engine holds about them now, and explain a placement's decision
// for them (POST /v1/decide?explain=1, which neither logs nor hands out a code).

import { call, el, facts, getJSON, say, show, table, when } from "./api.js";

const form = document.getElementById("find-form");
const who = document.getElementById("who");
const status = document.getElementById("people-status");
const matches = document.getElementById("matches");
const article = document.getElementById("person");
let current = null; // the person shown: "u:<id>" or "a:<id>"

form.addEventListener("submit", (event) => {
  event.preventDefault();
  find(who.value.trim(), true);
});

async function find(text, remember) {
  if (!text) return;
  matches.hidden = true;
  if (!text.includes("@")) return open(text, remember);
  say(status, `Looking for ${text}…`);
  try {
    const { people } = await getJSON(`/v1/people?email=${encodeURIComponent(text)}`);
    if (people.length === 1) return open(people[0], remember);
    article.hidden = true;
    if (!people.length) return say(status, `Nobody has the address ${text}.`);
    say(status, `${people.length} people have the address ${text}: choose one.`);
    matches.replaceChildren(...people.map((person) => {
      const button = el("button", { type: "button", class: "link" }, person);
      button.addEventListener("click", () => open(person, true));
      return el("li", {}, button);
    }));
    matches.hidden = false;
  } catch (error) {
    say(status, error.message, "error", error);
  }
}

async function open(person, remember) {
  say(status, `Loading ${person}…`);
  let view;
  try {
    view = await getJSON(`/v1/people/${encodeURIComponent(person)}`);
  } catch (error) {
    article.hidden = true;
    return say(status, error.message, "error", error);
  }
  current = view.person;
  if (remember) history.pushState({ person: current }, "", `?person=${encodeURIComponent(current)}`);
  who.value = current;
  if (!view.exists) {
    article.hidden = true;
    return say(status, `Attimo holds no profile for ${current} (no event about them yet).`);
  }
  render(view);
  article.hidden = false;
  document.getElementById("explain").replaceChildren();
  say(status, `Showing ${current}.`, "ok");
}

// An ISO 8601 time from the server, in the reader's own time zone.
function local(iso) {
  return iso ? new Date(iso).toLocaleString() : null;
}

function render(view) {
  document.getElementById("person-heading").textContent = view.person;
  facts(document.getElementById("person-facts"), [
    ["First seen", local(view.first_seen)],
    ["Last seen", local(view.last_seen)],
    ["Score", view.score],
    ["Profile version", view.version],
  ]);
  const segments = document.getElementById("segments");
  segments.replaceChildren(...(view.segments.length
    ? view.segments.map((s) => el("li", { class: "tag" }, s))
    : [el("li", { class: "empty" }, "In no segment now.")]));

  const { active, entered } = view.journeys;
  document.getElementById("journeys").replaceChildren(
    table("In progress", ["Journey", "Step", "Entered", "Waiting until", "Held out"],
      Object.entries(active).map(([id, run]) => [id, run.step, local(run.entered), local(run.waiting_until), run.held_out ? "yes" : "no"])),
    table("Last entry into each journey", ["Journey", "Entered", "Held out"],
      Object.entries(entered).map(([id, entry]) => [id, local(entry.at), entry.held_out ? "yes" : "no"])),
  );

  const { pending, recent } = view.messages;
  document.getElementById("messages").replaceChildren(
    table("Waiting to be sent", ["Channel", "Template", "Purpose", "Due", "State"],
      pending.map((m) => [m.channel, m.template, m.purpose, when(m.due_ms), m.state])),
    table("Recent outcomes, with their reasons", ["When", "Channel", "Template", "Status", "Reason"],
      recent.map((m) => [when(m.at), m.channel, m.template ?? m.journey, m.status, m.reason])),
  );
  document.getElementById("traits").replaceChildren(
    table("Traits", ["Trait", "Value"], Object.entries(view.traits)));
  const features = Object.entries(view.features).filter(([, value]) => value);
  document.getElementById("features").replaceChildren(
    table("Counts in their windows (zeros left out)", ["Feature", "Count"], features));
}

document.getElementById("explain-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const placement = document.getElementById("placement").value;
  const box = document.getElementById("explain");
  if (!current || !placement) return;
  const id = current.slice(2);
  const person = current.startsWith("a:") ? { anonymous_id: id } : { user_id: id };
  box.replaceChildren(el("p", { class: "status", role: "status" }, `Asking why for ${placement}…`));
  let answer;
  try {
    const response = await call("POST", "/v1/decide?explain=1", { json: { ...person, placements: [placement] } });
    answer = await response.json();
  } catch (error) {
    const line = el("p", { class: "status error", role: "status" });
    say(line, error.message, "error", error);
    return box.replaceChildren(line);
  }
  box.replaceChildren(...explanation(placement, answer));
});

function explanation(placement, answer) {
  const chosen = answer.placements?.[placement];
  const why = answer.explain?.[placement] ?? {};
  const summary = chosen
    ? el("p", { class: "verdict", id: "verdict" }, "Shows ", el("strong", {}, chosen.offer), ` in ${placement}.`)
    : el("p", { class: "verdict", id: "verdict" }, `Shows nothing in ${placement}: the page keeps its default content.`);
  if (answer.fallback) summary.append(" (The profile store did not answer in time: this is the fallback.)");
  if (why.error) return [summary, el("p", { class: "error" }, why.error)];
  const offers = why.offers ?? [];
  const byValue = why.arbitration === "expected_value";
  const headings = ["Offer", "Priority", "Score", ...(byValue ? ["Expected value"] : []), "Eligible", "Why not"];
  const rows = offers.map((row) => [
    row.offer + (row.chosen ? " (chosen)" : ""),
    row.priority,
    row.score,
    ...(byValue ? [row.expected_value === undefined ? "—" : Number(row.expected_value).toPrecision(3)] : []),
    row.eligible ? "yes" : "no",
    row.reason ?? "",
  ]);
  const parts = [summary, table(`Every offer for ${placement}, in the order considered`, headings, rows)];
  const person = answer.explain?._person;
  if (person) parts.push(el("p", { class: "small" }, `Score ${show(person.score)}; segments: ${(person.segments ?? []).join(", ") || "none"}.`));
  return parts;
}

window.addEventListener("popstate", () => start(false));

function start(remember) {
  const person = new URLSearchParams(location.search).get("person");
  if (person) {
    who.value = person;
    find(person, remember);
  }
}

start(false);
