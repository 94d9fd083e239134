// The rbee fleet dashboard: reads the queen's API and its event stream
// (GET /v1/events) and offers the everyday actions. No framework, no build.
"use strict";

const keyStore = "rbee.key";
const state = {
  workers: [],            // GET /v1/workers
  deployments: [],        // GET /v1/deployments
  orphans: new Map(),     // hive name -> GCResult, {error} or {busy: true}
  hives: [],              // GET /v1/hives
  devices: new Map(),     // hive name -> devices or {error}
  models: new Map(),      // hive name -> models or {error}
  live: new Map(),        // worker id -> WorkerSummary from the last summary
  history: [],            // total generated tokens/s, one per summary
};

const $ = (id) => document.getElementById(id);

// el builds an element; children may be strings, nodes or null.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

// ---- messages ----

function message(text, kind = "error") {
  const box = el("div", { class: "msg msg-" + kind, role: kind === "error" ? "alert" : "status" },
    el("span", {}, text),
    el("button", { title: "dismiss", onclick: () => box.remove() }, "×"));
  $("messages").prepend(box);
  const all = $("messages").children;
  while (all.length > 5) all[all.length - 1].remove();
  if (kind !== "error") setTimeout(() => box.remove(), 6000);
}

// ---- API ----

class APIError extends Error {
  constructor(status, msg) { super(msg); this.status = status; }
}

function authHeaders() {
  const key = sessionStorage.getItem(keyStore);
  return key ? { Authorization: "Bearer " + key } : {};
}

// api calls the queen and returns the parsed JSON, or throws an APIError
// holding the queen's own message.
async function api(method, path, body) {
  const headers = authHeaders();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, { method, headers,
      body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new APIError(0, "cannot reach the queen: " + e.message);
  }
  if (!resp.ok) throw await errorOf(resp);
  return resp.status === 204 ? null : resp.json();
}

async function errorOf(resp) {
  let msg = resp.status + " " + resp.statusText;
  try {
    const body = await resp.json();
    if (body && body.error && body.error.message) msg = body.error.message;
  } catch (_) { /* not JSON: keep the status line */ }
  if (resp.status === 401 || resp.status === 403) askForKey(msg);
  return new APIError(resp.status, msg);
}

// report shows a failed call, unless it only wants a key (the key panel
// says so already).
function report(what, e) {
  if (e.status !== 401 && e.status !== 403) message(what + ": " + e.message);
}

// ---- key ----

function askForKey(why) {
  $("key-why").textContent = why;
  $("key-panel").hidden = false;
}

function setupKey() {
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(keyStore, $("key-input").value.trim());
    $("key-input").value = "";
    $("key-panel").hidden = true;
    refreshAll();
    events.reconnect();
  });
  $("key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(keyStore);
    message("Key forgotten.", "info");
  });
}

// ---- formatting ----

function bytes(n) {
  if (!n) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + units[i];
}

function rate(n) { return n ? n.toFixed(1) : "–"; }

function statePill(s) {
  const kind = { ready: "ok", starting: "warn", loading: "warn", draining: "warn",
    lost: "bad", failed: "bad", stopped: "" }[s] ?? "";
  return el("span", { class: "pill" + (kind ? " pill-" + kind : "") }, s || "unknown");
}

// ---- workers ----

async function refreshWorkers() {
  try {
    state.workers = (await api("GET", "/v1/workers")).workers || [];
    renderWorkers();
  } catch (e) {
    report("Workers", e);
  }
}

function renderWorkers() {
  const body = $("workers").tBodies[0];
  const rows = state.workers.map((w) => {
    const live = state.live.get(w.id);
    const busy = live ? live.slots_busy : w.slots_busy;
    const total = (live && live.slots_total) || w.slots;
    const gen = live ? live.gen_tokens_per_sec : w.stats?.gen_tokens_per_sec;
    const prompt = live ? live.prompt_tokens_per_sec : w.stats?.prompt_tokens_per_sec;
    const drain = el("button", { class: "small", title: "take no new requests, let in-flight ones finish, then stop" }, "Drain");
    drain.addEventListener("click", () => drainWorker(w.id, drain));
    const stop = el("button", { class: "small danger", title: "stop this worker" }, "Stop");
    stop.addEventListener("click", () => stopWorker(w.id, stop));
    return el("tr", { "data-worker-id": w.id, "data-state": w.state },
      el("td", { class: "mono", title: w.error || "" }, w.id),
      el("td", {}, w.hive),
      el("td", { title: w.model_path || "" }, w.model),
      el("td", { class: "mono" }, w.device || "–"),
      el("td", {}, statePill(w.state)),
      el("td", {}, el("div", { class: "slots" },
        el("span", {}, busy + "/" + total),
        el("div", { class: "bar" }, el("div")))),
      el("td", { class: "num" }, rate(gen)),
      el("td", { class: "num" }, rate(prompt)),
      el("td", {}, drain, " ", stop));
  });
  body.replaceChildren(...rows);
  // Set bar widths through the CSSOM (the page's policy forbids inline styles).
  state.workers.forEach((w, i) => {
    const live = state.live.get(w.id);
    const busy = live ? live.slots_busy : w.slots_busy;
    const total = (live && live.slots_total) || w.slots || 1;
    rows[i].querySelector(".bar > div").style.width = Math.round(100 * busy / total) + "%";
  });
  $("workers-empty").hidden = state.workers.length > 0;
  $("worker-count").textContent = state.workers.length ? "(" + state.workers.length + ")" : "";
}

async function stopWorker(id, button) {
  button.disabled = true;
  button.textContent = "Stopping…";
  try {
    await api("DELETE", "/v1/workers/" + encodeURIComponent(id));
    message("Worker " + id + " stopped.", "info");
  } catch (e) {
    message("Stop " + id + ": " + e.message);
  }
  refreshWorkers();
}

async function drainWorker(id, button) {
  button.disabled = true;
  button.textContent = "Draining…";
  try {
    await api("POST", "/v1/workers/" + encodeURIComponent(id) + "/drain");
    message("Worker " + id + " drained and stopped.", "info");
  } catch (e) {
    message("Drain " + id + ": " + e.message);
  }
  refreshWorkers();
}

function setupSpawn() {
  $("spawn-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const req = { model: $("spawn-model").value.trim() };
    if ($("spawn-hive").value) req.hive = $("spawn-hive").value;
    if ($("spawn-device").value.trim()) req.device = $("spawn-device").value.trim();
    const slots = parseInt($("spawn-slots").value, 10);
    if (slots > 0) req.slots = slots;
    const button = $("spawn-submit");
    button.disabled = true;
    button.textContent = "Spawning…";
    try {
      const w = await api("POST", "/v1/workers", req);
      message("Worker " + w.id + " is " + w.state + " on " + w.hive + ".", "info");
    } catch (err) {
      message("Spawn: " + err.message);
    } finally {
      button.disabled = false;
      button.textContent = "Spawn";
    }
    refreshWorkers();
  });
}

// ---- deployments ----

async function refreshDeployments() {
  try {
    state.deployments = (await api("GET", "/v1/deployments")).deployments || [];
    renderDeployments();
  } catch (e) {
    report("Deployments", e);
  }
}

// deploymentPill says where d stands against its replica count.
function deploymentPill(d) {
  if (d.error) return el("span", { class: "pill pill-bad", title: d.error }, "failing");
  if (d.ready === d.replicas) return el("span", { class: "pill pill-ok" }, d.replicas ? "ready" : "scaled to 0");
  if (d.live > d.replicas) return el("span", { class: "pill pill-warn" }, "scaling down");
  return el("span", { class: "pill pill-warn" }, "starting");
}

function renderDeployments() {
  const body = $("deployments").tBodies[0];
  // A replica count being typed in survives a refresh.
  const typing = document.activeElement?.closest?.("#deployments tr[data-deployment]");
  const kept = typing ? { name: typing.dataset.deployment,
    value: typing.querySelector("input").value } : null;
  const rows = state.deployments.map((d) => {
    const replicas = el("input", { type: "number", min: "0", value: String(d.replicas),
      class: "replicas", title: "replicas wanted" });
    const scale = el("button", { class: "small", type: "submit", title: "set the replica count" }, "Scale");
    const form = el("form", { class: "inline" }, replicas, scale);
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      scaleDeployment(d, parseInt(replicas.value, 10), scale);
    });
    const remove = el("button", { class: "small danger", title: "forget this deployment, drain and stop its workers" }, "Remove");
    remove.addEventListener("click", () => removeDeployment(d.name, remove));
    const status = [deploymentPill(d)];
    if (d.error) {
      const retry = d.next_spawn ? " (retrying " + new Date(d.next_spawn).toLocaleTimeString() + ")" : "";
      status.push(el("div", { class: "error-text" }, d.error + retry));
    }
    return el("tr", { "data-deployment": d.name, "data-ready": d.ready + "/" + d.replicas },
      el("td", { class: "mono", title: (d.workers || []).join(", ") }, d.name),
      el("td", { title: d.model }, d.model),
      el("td", {}, d.hive || el("span", { class: "hint" }, "placed")),
      el("td", { class: "ready" }, d.ready + "/" + d.replicas),
      el("td", {}, status),
      el("td", {}, form),
      el("td", {}, remove));
  });
  body.replaceChildren(...rows);
  if (kept) {
    const row = rows.find((r) => r.dataset.deployment === kept.name);
    if (row) {
      const input = row.querySelector("input");
      input.value = kept.value;
      input.focus();
    }
  }
  $("deployments").hidden = state.deployments.length === 0;
  $("deployments-empty").hidden = state.deployments.length > 0;
  $("deployment-count").textContent = state.deployments.length ? "(" + state.deployments.length + ")" : "";
}

// deployRequest is d as a POST /v1/deployments body: every spawn setting
// it has, so that only the replica count changes.
function deployRequest(d, replicas) {
  const req = { name: d.name, model: d.model, replicas };
  for (const k of ["hive", "device", "slots", "ctx_size", "gpu_layers", "threads", "restart"]) {
    if (d[k] !== undefined && d[k] !== null && d[k] !== "") req[k] = d[k];
  }
  return req;
}

async function scaleDeployment(d, replicas, button) {
  if (!(replicas >= 0)) {
    message("Scale " + d.name + ": the replica count must be 0 or more.");
    return;
  }
  button.disabled = true;
  button.textContent = "Scaling…";
  try {
    const got = await api("POST", "/v1/deployments", deployRequest(d, replicas));
    message("Deployment " + got.name + " scaled to " + got.replicas + ".", "info");
  } catch (e) {
    message("Scale " + d.name + ": " + e.message);
  }
  document.activeElement?.blur?.();
  refreshDeployments();
  refreshWorkers();
}

async function removeDeployment(name, button) {
  if (!confirm("Remove deployment " + name + "? Its workers are drained and stopped.")) return;
  button.disabled = true;
  button.textContent = "Removing…";
  try {
    const got = await api("DELETE", "/v1/deployments/" + encodeURIComponent(name));
    const n = (got.workers || []).length;
    message("Deployment " + name + " removed; " + n + " worker" + (n === 1 ? "" : "s") + " stopped.", "info");
  } catch (e) {
    message("Remove " + name + ": " + e.message);
  }
  refreshDeployments();
  refreshWorkers();
}

function setupDeploy() {
  $("deploy-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const req = { model: $("deploy-model").value.trim(),
      replicas: parseInt($("deploy-replicas").value, 10) || 0 };
    if ($("deploy-name").value.trim()) req.name = $("deploy-name").value.trim();
    const slots = parseInt($("deploy-slots").value, 10);
    if (slots > 0) req.slots = slots;
    const button = $("deploy-submit");
    button.disabled = true;
    button.textContent = "Deploying…";
    try {
      const d = await api("POST", "/v1/deployments", req);
      message("Deployment " + d.name + " recorded: " + d.live + " of " + d.replicas +
        " worker" + (d.replicas === 1 ? "" : "s") + " started.", "info");
    } catch (err) {
      message("Deploy: " + err.message);
    } finally {
      button.disabled = false;
      button.textContent = "Deploy";
    }
    refreshDeployments();
    refreshWorkers();
  });
}

// ---- hives, devices, models ----

async function refreshHives() {
  try {
    state.hives = (await api("GET", "/v1/hives")).hives || [];
  } catch (e) {
    report("Hives", e);
    return;
  }
  renderHives();
  renderHiveChoices();
  await Promise.all(state.hives.map(async (h) => {
    const name = encodeURIComponent(h.name);
    const [devices, models] = await Promise.allSettled([
      api("GET", "/v1/hives/" + name + "/devices"),
      api("GET", "/v1/hives/" + name + "/models")]);
    state.devices.set(h.name, devices.status === "fulfilled" ? devices.value
      : { error: devices.reason.message });
    state.models.set(h.name, models.status === "fulfilled" ? models.value.models || []
      : { error: models.reason.message });
  }));
  renderHives();
  renderModels();
}

// refreshHiveList rereads the hives after a probe: their devices and
// models only when one is new or its reachability changed (the queen
// probes every hive every few seconds; asking each for its devices as
// often would be wasteful).
async function refreshHiveList() {
  const before = new Map(state.hives.map((h) => [h.name, hiveReachable(h)]));
  let hives;
  try {
    hives = (await api("GET", "/v1/hives")).hives || [];
  } catch (e) {
    report("Hives", e);
    return;
  }
  if (hives.length !== before.size || hives.some((h) =>
    !before.has(h.name) || before.get(h.name) !== (h.checked_at ? h.reachable : before.get(h.name)))) {
    refreshHives();
    return;
  }
  state.hives = hives;
  renderHives();
}

function renderHiveChoices() {
  for (const id of ["spawn-hive", "download-hive"]) {
    const select = $(id);
    const keep = select.value;
    const first = id === "spawn-hive" ? [el("option", { value: "" }, "let the queen choose")] : [];
    select.replaceChildren(...first,
      ...state.hives.map((h) => el("option", { value: h.name }, h.name)));
    if ([...select.options].some((o) => o.value === keep)) select.value = keep;
  }
}

function renderDevices(d) {
  if (!d) return el("dd", { class: "hint" }, "asking…");
  if (d.error) return el("dd", { class: "error-text" }, d.error);
  const lines = [d.cpu.cores + " cores, " + bytes(d.cpu.ram_available) + " free of " +
    bytes(d.cpu.ram_total)];
  for (const g of d.gpus || []) {
    lines.push(g.device + " " + g.name + ", " + bytes(g.memory_free) + " free of " +
      bytes(g.memory_total));
  }
  if (d.gpu_error) lines.push("GPUs: " + d.gpu_error);
  return el("dd", {}, lines.map((l, i) => [i ? el("br") : null, l]));
}

// hivePill says how the last contact with h went: its own check, else
// whether it answered for its devices.
function hiveReachable(h) {
  if (h.checked_at) return h.reachable;
  const d = state.devices.get(h.name);
  if (h.reachable || (d && !d.error)) return true;
  if (h.last_error || (d && d.error)) return false;
  return null;
}

function hivePill(h) {
  const checked = h.checked_at ? "checked " + new Date(h.checked_at).toLocaleTimeString() : "";
  switch (hiveReachable(h)) {
    case true: return el("span", { class: "pill pill-ok", title: checked }, "reachable");
    case false: return el("span", { class: "pill pill-bad", title: checked }, "unreachable");
  }
  return el("span", { class: "pill" }, "not checked");
}

// ---- orphans ----

function renderOrphans(h) {
  const find = el("button", { class: "small", title: "list worker processes on this hive that the queen does not want" }, "Find orphans");
  find.addEventListener("click", () => findOrphans(h.name, false));
  const res = state.orphans.get(h.name);
  if (!res) return el("dd", {}, find);
  if (res.busy) return el("dd", { class: "hint" }, "asking…");
  if (res.error) return el("dd", {}, el("div", { class: "error-text" }, res.error), find);
  const orphans = res.orphans || [];
  const parts = [];
  if (!orphans.length) parts.push(el("span", { class: "hint" }, "none "));
  else {
    parts.push(el("ul", { class: "orphans" }, orphans.map((o) =>
      el("li", { class: o.error ? "error-text" : "" },
        el("span", { class: "mono" }, o.id || o.pid || "?"), ": ", o.reason,
        res.dry_run ? "" : o.done ? " (" + (o.action === "stop" ? "stopped" : "record removed") + ")"
          : " (" + (o.error || "not done") + ")"))));
    if (res.dry_run) {
      const gc = el("button", { class: "small danger", title: "stop these processes and remove the records of ended ones" },
        "Collect " + orphans.length);
      gc.addEventListener("click", () => {
        if (confirm("Stop " + orphans.length + " orphan(s) on " + h.name + "?")) findOrphans(h.name, true);
      });
      parts.push(gc, " ");
    }
  }
  parts.push(find);
  return el("dd", { "data-orphans": String(orphans.length) }, parts);
}

async function findOrphans(name, gc) {
  state.orphans.set(name, { busy: true });
  renderHives();
  const path = "/v1/hives/" + encodeURIComponent(name) + (gc ? "/gc" : "/orphans");
  try {
    state.orphans.set(name, await api(gc ? "POST" : "GET", path));
  } catch (e) {
    state.orphans.set(name, { error: e.message });
  }
  renderHives();
}

function renderHives() {
  const cards = state.hives.map((h) => el("div", { class: "card" +
      (hiveReachable(h) === false ? " card-bad" : ""), "data-hive": h.name },
    el("h3", {}, h.name, hivePill(h)),
    el("dl", {},
      el("dt", {}, "Host"), el("dd", { class: "mono" },
        h.local ? "this machine" : (h.user ? h.user + "@" : "") + h.host),
      el("dt", {}, "Version"), el("dd", {}, h.version || "–"),
      el("dt", {}, "System"), el("dd", {}, h.os ? h.os + "/" + h.arch : "–"),
      el("dt", {}, "Devices"), renderDevices(state.devices.get(h.name)),
      h.last_error ? [el("dt", {}, "Error"), el("dd", { class: "error-text" }, h.last_error)] : null,
      el("dt", {}, "Orphans"), renderOrphans(h))));
  $("hives").replaceChildren(...(cards.length ? cards
    : [el("p", { class: "empty" }, "No hives. Add one with `rbee hive add`.")]));
}

function renderModels() {
  const paths = [];
  const blocks = state.hives.map((h) => {
    const models = state.models.get(h.name);
    let content;
    if (!models) content = el("p", { class: "hint" }, "asking…");
    else if (models.error) content = el("p", { class: "error-text" }, models.error);
    else if (!models.length) content = el("p", { class: "empty" }, "No models yet.");
    else {
      content = el("table", { class: "grid" },
        el("thead", {}, el("tr", {}, el("th", {}, "Name"), el("th", {}, "Quant"),
          el("th", { class: "num" }, "Size"), el("th", { class: "num" }, "Context"), el("th"))),
        el("tbody", {}, models.map((m) => {
          paths.push(m.path);
          const use = el("button", { class: "small", title: "fill the spawn form" }, "Spawn…");
          use.addEventListener("click", () => {
            $("spawn-model").value = m.path;
            $("spawn-hive").value = h.name;
            $("spawn-model").focus();
          });
          return el("tr", { "data-model": m.name },
            el("td", { title: m.path }, m.name),
            el("td", {}, m.quantization || "–"),
            el("td", { class: "num" }, bytes(m.size)),
            el("td", { class: "num" }, m.context_length || "–"),
            el("td", {}, use));
        })));
    }
    return el("div", { class: "hive-models" }, el("h3", {}, h.name), content);
  });
  $("models").replaceChildren(...blocks);
  $("model-paths").replaceChildren(...[...new Set(paths)].filter(Boolean)
    .map((p) => el("option", { value: p })));
}

// ---- download ----

function setupDownload() {
  $("download-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const req = { hive: $("download-hive").value, ref: $("download-ref").value.trim() };
    if ($("download-name").value.trim()) req.name = $("download-name").value.trim();
    const button = $("download-submit");
    button.disabled = true;
    showProgress(0, 0, 0, "starting…");
    try {
      await download(req);
    } catch (err) {
      message("Download: " + err.message);
      $("download-progress").hidden = true;
    } finally {
      button.disabled = false;
    }
  });
}

function showProgress(done, total, bps, text) {
  $("download-progress").hidden = false;
  $("download-bar").style.width = total ? Math.round(100 * done / total) + "%" : "0";
  $("download-text").textContent = text ||
    bytes(done) + (total ? " of " + bytes(total) : "") + (bps ? ", " + bytes(bps) + "/s" : "");
}

// download posts req and follows the server-sent events of its progress.
async function download(req) {
  const headers = { ...authHeaders(), "Content-Type": "application/json" };
  const resp = await fetch("/v1/models/download", { method: "POST", headers,
    body: JSON.stringify(req) });
  if (!resp.ok) throw await errorOf(resp);
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const chunk = buf.slice(0, end);
      buf = buf.slice(end + 2);
      for (const line of chunk.split("\n")) {
        if (line.startsWith("data: ")) downloadEvent(JSON.parse(line.slice(6)));
      }
    }
  }
}

function downloadEvent(ev) {
  if (ev.event === "progress") {
    showProgress(ev.bytes, ev.total, ev.rate);
  } else if (ev.event === "done") {
    showProgress(1, 1, 0, "done: " + ev.model.name + " (" + bytes(ev.model.size) + ")");
    message("Downloaded " + ev.model.name + ".", "info");
    refreshHives();
  } else if (ev.event === "error") {
    throw new Error(ev.error ? ev.error.message : "the download failed");
  }
}

// ---- throughput ----

function summary(ev) {
  state.live = new Map((ev.workers || []).map((w) => [w.id, w]));
  const total = (ev.workers || []).reduce((n, w) => n + (w.gen_tokens_per_sec || 0), 0);
  state.history.push(total);
  if (state.history.length > 60) state.history.shift();
  $("tps-total").textContent = total.toFixed(1);
  const max = Math.max(1, ...state.history);
  const step = 120 / 59;
  const start = 60 - state.history.length;
  $("tps-line").setAttribute("points", state.history.map((v, i) =>
    ((start + i) * step).toFixed(1) + "," + (27 - 26 * v / max).toFixed(1)).join(" "));
  const known = new Set(state.workers.map((w) => w.id));
  if ((ev.workers || []).some((w) => !known.has(w.id))) soon(refreshWorkers);
  else renderWorkers();
}

// ---- event stream ----

// soon runs f once shortly, however often it is asked in the meantime.
const pending = new Map();
function soon(f) {
  if (pending.has(f)) return;
  pending.set(f, setTimeout(() => { pending.delete(f); f(); }, 150));
}

const events = {
  ws: null,
  retry: 1000,
  connect() {
    const key = sessionStorage.getItem(keyStore);
    // Browsers cannot send headers on a WebSocket: the key rides as a
    // subprotocol, and the queen answers with plain rbee.v1.
    const protocols = key ? ["rbee.v1", "rbee.key." + key] : ["rbee.v1"];
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/events";
    const ws = new WebSocket(url, protocols);
    this.ws = ws;
    ws.onopen = () => {
      this.retry = 1000;
      setConn("live", "pill-live");
      refreshWorkers();
      refreshDeployments();
    };
    ws.onmessage = (m) => {
      const ev = JSON.parse(m.data);
      if (ev.type === "summary") summary(ev);
      else if (ev.type === "worker") workerEvent(ev);
      else if (ev.type === "hive") soon(refreshHiveList);
    };
    ws.onclose = (c) => {
      if (this.ws !== ws) return;
      setConn("reconnecting…", "pill-off");
      if (c.reason) message("Event stream closed: " + c.reason);
      else api("GET", "/v1/status").catch(() => {}); // a 401 here asks for a key
      setTimeout(() => this.connect(), this.retry);
      this.retry = Math.min(this.retry * 2, 10000);
    };
  },
  reconnect() {
    const old = this.ws;
    this.ws = null;
    if (old) old.close();
    this.connect();
  },
};

function setConn(text, cls) {
  $("conn").textContent = text;
  $("conn").className = "pill " + cls;
}

function workerEvent(ev) {
  const w = state.workers.find((x) => x.id === ev.worker_id);
  if (w) {
    w.state = ev.state;
    renderWorkers();
  }
  if (ev.state === "lost" || ev.state === "failed") {
    message("Worker " + ev.worker_id + " " + ev.state + (ev.reason ? ": " + ev.reason : ""));
  }
  soon(refreshWorkers);
  soon(refreshDeployments);
}

// ---- start ----

function refreshAll() {
  refreshWorkers();
  refreshDeployments();
  refreshHives();
}

document.addEventListener("DOMContentLoaded", () => {
  setupKey();
  setupSpawn();
  setupDownload();
  setupDeploy();
  refreshAll();
  events.connect();
  // Deployments also change without a worker event (a failed spawn, a
  // retry scheduled): look again now and then.
  setInterval(() => { if (!document.hidden) refreshDeployments(); }, 5000);
});
