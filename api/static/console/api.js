// What every console page shares: calls to the server's /v1/… API with the
// session cookie (and, on a request that changes something, the session's
// CSRF nonce from the page's meta tag), errors as readable sentences, and a
// small DOM builder that only ever sets text, never HTML.

const csrf = document.querySelector('meta[name="csrf-token"]')?.content ?? "";
export const scopes = new Set((document.querySelector('meta[name="session-scopes"]')?.content ?? "").split(" "));

export class ApiError extends Error {
  constructor(status, reason, body) {
    super(reason);
    this.status = status;
    this.body = body;
  }
}

// fetch a /v1/… path; resolves to the Response when it is 2xx, throws ApiError otherwise.
export async function call(method, path, { json, text, contentType } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = csrf;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (text !== undefined) {
    headers["Content-Type"] = contentType ?? "text/plain; charset=utf-8";
    body = text;
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body, credentials: "same-origin", cache: "no-store" });
  } catch (error) {
    throw new ApiError(0, `The server did not answer (${error.message}).`, null);
  }
  if (response.ok) return response;
  let parsed = null;
  try {
    parsed = await response.json();
  } catch {
    parsed = null;
  }
  throw new ApiError(response.status, reasonFor(response.status, parsed), parsed);
}

export async function getJSON(path) {
  return (await call("GET", path)).json();
}

function reasonFor(status, body) {
  const said = body && typeof body.error === "string" ? body.error : "";
  if (status === 401) return `Your session has ended${said ? ` (${said})` : ""}: sign in again.`;
  if (status === 403) return `Not allowed: ${said || "this session's token may not do this"}.`;
  if (status === 404) return said ? `Not found: ${said}.` : "Not found.";
  if (status === 422) return said ? `Refused: ${said}${body.field ? ` (${body.field})` : ""}.` : "Refused.";
  if (status === 429) return "Too many requests: wait a moment and try again.";
  if (status >= 500) return `The server could not answer (${status})${said ? `: ${said}` : ""}.`;
  return said || `The server answered ${status}.`;
}

// el("td", {class: "x"}, "text", child, …): attributes and text only.
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// A status line (role=status): kind "error" or "ok" styles it; a 401 adds a sign-in link.
export function say(node, text, kind = "", error = null) {
  node.className = `status ${kind}`.trim();
  node.replaceChildren(text);
  if (error instanceof ApiError && error.status === 401) {
    const next = encodeURIComponent(location.pathname + location.search);
    node.append(" ", el("a", { href: `/console/sign-in?next=${next}` }, "Sign in"));
  }
}

// [[key, value], …] as a table with a caption; values shown as text (objects as JSON).
export function table(caption, headings, rows) {
  if (!rows.length) return el("p", { class: "empty" }, `${caption}: none.`);
  return el("div", { class: "table-wrap" }, el("table", {},
    el("caption", {}, caption),
    el("thead", {}, el("tr", {}, headings.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows.map((row) => el("tr", {}, row.map((cell, i) =>
      i === 0 ? el("th", { scope: "row" }, show(cell)) : el("td", {}, cell instanceof Node ? cell : show(cell))))))));
}

export function show(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

export function when(ms) {
  if (!ms) return "—";
  return new Date(ms).toLocaleString();
}

export function facts(dl, pairs) {
  dl.replaceChildren(...pairs.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, show(value))]));
}
