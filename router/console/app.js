// Herald console (docs/console.md). Calls the HTTP/JSON API under /console/api/ with the session
// cookie and this page's CSRF token; renders with DOM nodes and textContent only.
"use strict";

const meta = (name) => document.querySelector(`meta[name="${name}"]`).content;
const CSRF = meta("herald-csrf");
const SCOPE = meta("herald-scope");
const OWN_PROJECT = meta("herald-project");
const $ = (id) => document.getElementById(id);

let projects = [];
let stats = { edges: [], projects: {}, series: [], missing_edges: [] };
let selected = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function status(text, ok) {
  const s = $("status");
  s.textContent = text;
  s.className = ok ? "ok" : "";
}

async function request(method, path, body) {
  const init = { method, credentials: "same-origin", headers: { "x-herald-csrf": CSRF } };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch("/console/api" + path, init);
  if (r.status === 401) {
    // The session ended: back to the login page.
    window.location.assign("/console/");
    throw new Error("session ended");
  }
  if (r.status === 204) return {};
  const v = await r.json();
  if (!r.ok) throw new Error(`${v.code}: ${v.message}`);
  return v;
}

const call = (path, body) => request("POST", "/v1" + path, body || {});

// Runs an action; reports its error or its success in the status line.
async function act(what, fn) {
  try {
    await fn();
    status(what, true);
  } catch (e) {
    status(`${what} failed: ${e.message}`, false);
  }
}

function lines(text) {
  return text.split("\n").map((s) => s.trim()).filter((s) => s !== "");
}

// ---- charts

function chart(svg, values) {
  while (svg.firstChild) svg.firstChild.remove();
  if (values.length < 2) return;
  const max = Math.max(1, ...values);
  const n = values.length;
  const points = values
    .map((v, i) => `${((i / (n - 1)) * 300).toFixed(1)},${(78 - (v / max) * 74).toFixed(1)}`)
    .join(" ");
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points);
  svg.append(line);
  const label = document.createElementNS("http://www.w3.org/2000/svg", "text");
  label.setAttribute("x", "4");
  label.setAttribute("y", "12");
  label.setAttribute("font-size", "10");
  label.setAttribute("fill", "#667");
  label.textContent = `max ${max.toFixed(1)}`;
  svg.append(label);
}

function renderCharts() {
  const m = stats.series.map((p) => p.messages_per_s);
  const d = stats.series.map((p) => p.deliveries_per_s);
  chart($("chart-messages"), m);
  chart($("chart-deliveries"), d);
  $("messages-now").textContent = (m.at(-1) || 0).toFixed(1);
  $("deliveries-now").textContent = (d.at(-1) || 0).toFixed(1);
  const missing = stats.missing_edges.length ? `; not answering: ${stats.missing_edges.join(", ")}` : "";
  $("edges").textContent = `(${stats.edges.length} edge${stats.edges.length === 1 ? "" : "s"}${missing})`;
}

// ---- projects

function renderProjects() {
  const head = $("projects-head");
  head.replaceChildren(
    el("th", {}, "Project"),
    el("th", {}, "Source"),
    el("th", {}, "State"),
    el("th", {}, "Connections"),
    ...stats.edges.map((e) => el("th", {}, e)),
    el("th", {}),
  );
  const body = $("projects").tBodies[0];
  body.replaceChildren(
    ...projects.map((p) => {
      const c = stats.projects[p.project] || { connections: 0, by_edge: {} };
      return el(
        "tr",
        { dataset: { project: p.project } },
        el("td", {}, p.project),
        el("td", {}, p.source),
        el("td", {}, p.disabled ? "disabled" : "enabled"),
        el("td", { class: "connections" }, c.connections),
        ...stats.edges.map((e) => el("td", { dataset: { edge: e } }, c.by_edge[e] || 0)),
        el("td", {}, el("button", { type: "button", class: "secondary manage", onclick: () => select(p.project) }, "Manage")),
      );
    }),
  );
  const find = $("find-project");
  const current = find.value;
  find.replaceChildren(...projects.map((p) => el("option", { value: p.project }, p.project)));
  if (projects.some((p) => p.project === current)) find.value = current;
}

async function loadProjects() {
  const v = await call("/admin/projects/list");
  projects = v.projects;
  renderProjects();
  if (selected) {
    const p = projects.find((x) => x.project === selected);
    if (p) renderDetail(p);
    else {
      selected = null;
      $("project-detail").hidden = true;
    }
  }
}

async function loadStats() {
  stats = await request("GET", "/stats");
  renderCharts();
  renderProjects();
}

// ---- one project

function select(id) {
  selected = id;
  const p = projects.find((x) => x.project === id);
  if (p) renderDetail(p);
  $("new-api-key").hidden = true;
  $("project-detail").scrollIntoView();
}

function renderDetail(p) {
  $("project-detail").hidden = false;
  $("detail-name").textContent = p.project;
  $("detail-source").textContent = `(${p.source})`;
  const readOnly = p.source !== "api";
  $("detail-readonly").hidden = !readOnly;
  for (const f of document.querySelectorAll("#project-detail input, #project-detail textarea, #project-detail select, #project-detail button")) {
    f.disabled = readOnly;
  }
  const l = p.limits || {};
  // Not while the operator is typing in them.
  if (!$("limits-form").contains(document.activeElement)) {
    $("origins").value = (l.origins || []).join("\n");
    $("allow-ips").value = (l.allow_ips || []).join("\n");
    $("deny-ips").value = (l.deny_ips || []).join("\n");
    $("require-origin").checked = l.require_origin === true;
    $("disabled").checked = p.disabled;
  }
  $("jwt-keys").replaceChildren(
    ...p.jwt_keys.map((k) =>
      el(
        "li",
        {},
        `${k.kid || "(no kid)"} ${k.alg}`,
        el("button", { type: "button", class: "secondary retire", dataset: { kid: k.kid }, onclick: () => retireKey(p.project, k.kid) }, "Retire"),
      ),
    ),
  );
  $("api-keys").replaceChildren(
    ...p.api_keys.map((k) =>
      el(
        "li",
        {},
        k.id + (k.created_at ? ` created ${new Date(k.created_at * 1000).toISOString()}` : ""),
        el("button", { type: "button", class: "secondary", onclick: () => deleteApiKey(p.project, k.id) }, "Delete"),
      ),
    ),
  );
  for (const b of document.querySelectorAll("#project-detail li button")) b.disabled = readOnly;
}

function keyOf(kid, alg, secret) {
  const key = { kid, alg };
  if (alg === "HS256") key.secret = secret;
  else key.public_key_pem = secret;
  return key;
}

async function saveLimits(ev) {
  ev.preventDefault();
  const p = projects.find((x) => x.project === selected);
  if (!p) return;
  const limits = Object.assign({}, p.limits, {
    origins: lines($("origins").value),
    allow_ips: lines($("allow-ips").value),
    deny_ips: lines($("deny-ips").value),
    require_origin: $("require-origin").checked ? true : null,
  });
  await act(`Saved ${p.project}`, async () => {
    await call("/admin/projects/update", { project: p.project, limits, disabled: $("disabled").checked });
    document.activeElement.blur();
    await loadProjects();
  });
}

async function retireKey(project, kid) {
  if (!window.confirm(`Retire key ${kid} of ${project}? Tokens it signed are refused from now on.`)) return;
  await act(`Retired key ${kid}`, async () => {
    await call("/admin/jwt_keys/retire", { project, kid });
    await loadProjects();
  });
}

async function addKey(ev) {
  ev.preventDefault();
  const kid = $("key-kid").value.trim();
  await act(`Added key ${kid}`, async () => {
    await call("/admin/jwt_keys/add", { project: selected, key: keyOf(kid, $("key-alg").value, $("key-secret").value) });
    $("add-key-form").reset();
    await loadProjects();
  });
}

async function createApiKey() {
  await act("Created an API key: copy it now, it is not shown again", async () => {
    const v = await call("/admin/api_keys/create", { project: selected });
    $("new-api-key-value").textContent = v.key;
    $("new-api-key").hidden = false;
    await loadProjects();
  });
}

async function deleteApiKey(project, id) {
  if (!window.confirm(`Delete API key ${id} of ${project}?`)) return;
  await act(`Deleted API key ${id}`, async () => {
    await call("/admin/api_keys/delete", { project, id });
    await loadProjects();
  });
}

async function deleteProject() {
  const project = selected;
  if (!window.confirm(`Delete project ${project}? Its clients can no longer connect.`)) return;
  await act(`Deleted ${project}`, async () => {
    await call("/admin/projects/delete", { project });
    selected = null;
    $("project-detail").hidden = true;
    await loadProjects();
  });
}

async function createProject(ev) {
  ev.preventDefault();
  const project = $("create-id").value.trim();
  const kid = $("create-kid").value.trim();
  const secret = $("create-secret").value;
  const body = { project, jwt_keys: kid ? [keyOf(kid, $("create-alg").value, secret)] : [] };
  await act(`Created ${project}`, async () => {
    await call("/admin/projects/create", body);
    $("create-form").reset();
    await loadProjects();
    select(project);
  });
}

// ---- connections

let lastFind = null;

async function find(ev) {
  ev.preventDefault();
  const project = $("find-project").value;
  const kind = $("find-kind").value;
  const id = $("find-id").value.trim();
  lastFind = { project, kind, id };
  $("kick-user").hidden = kind !== "user";
  await act(`Listed the connections of ${kind} ${id}`, listAgain);
}

// Lists the connections of the last search again.
async function listAgain() {
  if (!lastFind) return;
  const { project, kind, id } = lastFind;
  {
    const all = [];
    let token = "";
    // Every page (1,000 a page), up to 10,000 connections.
    do {
      const v = await call("/connections/list", { project, [kind]: id, page_token: token });
      all.push(...v.connections);
      token = v.next_page_token;
    } while (token && all.length < 10000);
    renderConnections(all);
  }
}

function renderConnections(list) {
  $("found").textContent = `${list.length} connection${list.length === 1 ? "" : "s"}`;
  $("connections").tBodies[0].replaceChildren(
    ...list.map((c) =>
      el(
        "tr",
        { dataset: { id: c.id } },
        el("td", {}, c.id),
        el("td", {}, c.user),
        el("td", {}, c.edge),
        el("td", {}, c.remote_addr),
        el("td", {}, new Date(c.connected_since_unix_ms).toISOString()),
        el("td", {}, c.groups.join(", ")),
        el("td", {}, el("button", { type: "button", class: "danger kick", onclick: () => kick({ connection_id: c.id }) }, "Kick")),
      ),
    ),
  );
}

async function kick(who) {
  if (!lastFind) return;
  const what = who.user ? `all of ${who.user}'s connections` : `connection ${who.connection_id}`;
  await act(`Kicked ${what}`, async () => {
    const v = await call("/connections/disconnect", Object.assign({ project: lastFind.project }, who));
    status(`Kicked ${v.disconnected} connection${v.disconnected === 1 ? "" : "s"}`, true);
  });
  // Kicked connections leave within moments: list again.
  window.setTimeout(() => listAgain().catch((e) => status(`Not listed: ${e.message}`, false)), 300);
}

// ---- audit

async function loadAudit() {
  const entries = [];
  let after = 0;
  for (;;) {
    const v = await call("/admin/audit/list", { after, limit: 1000 });
    entries.push(...v.entries);
    if (v.entries.length < 1000) break;
    after = v.entries.at(-1).seq;
    entries.splice(0, Math.max(0, entries.length - 50));
  }
  $("audit").tBodies[0].replaceChildren(
    ...entries
      .slice(-50)
      .reverse()
      .map((e) =>
        el(
          "tr",
          {},
          el("td", {}, e.seq),
          el("td", {}, new Date(e.at_ms).toISOString()),
          el("td", {}, e.actor),
          el("td", {}, e.action),
          el("td", {}, e.project),
          el("td", {}, e.detail),
        ),
      ),
  );
}

// ---- start

async function refresh() {
  try {
    await loadStats();
  } catch (e) {
    status(`Stats not read: ${e.message}`, false);
  }
}

async function slowRefresh() {
  try {
    await loadProjects();
    await loadAudit();
  } catch (e) {
    status(`Projects not read: ${e.message}`, false);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  if (SCOPE === "admin") document.body.classList.add("admin");
  $("who").textContent = SCOPE === "admin" ? `${$("who").textContent} (admin)` : `${$("who").textContent} (project ${OWN_PROJECT})`;
  $("logout").addEventListener("click", async () => {
    try {
      await request("POST", "/logout");
    } finally {
      window.location.assign("/console/");
    }
  });
  $("create-form").addEventListener("submit", createProject);
  $("find-form").addEventListener("submit", find);
  $("kick-user").addEventListener("click", () => lastFind && kick({ user: lastFind.id }));
  $("limits-form").addEventListener("submit", saveLimits);
  $("add-key-form").addEventListener("submit", addKey);
  $("create-api-key").addEventListener("click", createApiKey);
  $("delete-project").addEventListener("click", deleteProject);
  slowRefresh().then(refresh);
  window.setInterval(refresh, 2000);
  window.setInterval(slowRefresh, 10000);
  // Audit entries of this console's own changes show at once.
  document.addEventListener("submit", () => window.setTimeout(slowRefresh, 500));
});
