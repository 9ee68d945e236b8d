// faultlab's control page: profiles, flows, the live ladder and guided scenarios, over the control API.
// Vanilla JS, no build step. Text from the network goes into the page as text (textContent), never as HTML.
"use strict";

// -- the token: /?token=T once, then kept in local storage and sent as a Bearer header ------------------
const TOKEN_KEY = "faultlab-api-token";
(function takeToken() {
  const params = new URLSearchParams(location.search);
  if (!params.has("token")) return;
  const given = params.get("token");
  if (given) localStorage.setItem(TOKEN_KEY, given); else localStorage.removeItem(TOKEN_KEY);
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
})();
const token = localStorage.getItem(TOKEN_KEY);

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

// A problem the network reported (faultlab unreachable, an HTTP error) goes when an answer comes back; a hint to
// the user (choose a profile first) stays until their next tap, whatever refreshes arrive meanwhile.
let networkProblem = false;
function problem(text, fromNetwork = false) {
  const p = $("problem");
  p.textContent = text || "";
  p.hidden = !text;
  networkProblem = Boolean(text) && fromNetwork;
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (err) {
    problem("faultlab does not answer: is the proxy still running?", true);
    throw err;
  }
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (err) {
    // not JSON: an error page from something in front of faultlab (an HTML 502), or a broken answer
    if (resp.ok) {
      problem(`HTTP ${resp.status}: faultlab's answer is not JSON`, true);
      throw err;
    }
  }
  if (!resp.ok) {
    const msg = (data && data.error) || `HTTP ${resp.status}${resp.statusText ? " " + resp.statusText : ""}`;
    problem(resp.status === 401
      ? "This faultlab needs its API token: open the page as /?token=TOKEN (" + msg + ")" : msg, true);
    throw new Error(msg);
  }
  if (networkProblem) problem("");
  return data;
}

// -- refreshes, coalesced ------------------------------------------------------------------------------
const pending = {};
function soon(name, fn, delay = 120) {
  if (pending[name]) return;
  pending[name] = setTimeout(async () => {
    pending[name] = null;
    try { await fn(); } catch (err) { console.warn(name, err); }
  }, delay);
}

// -- profiles --------------------------------------------------------------------------------------------
// The selector shows the profile in force for its target (every device, or the device typed below), so that one
// tap on "Use ..." never applies a fault nobody chose; a choice the user made is kept until it is applied or the
// target changes.
let library = [];
let active = null; // the last GET /active
let profileTouched = false;
let shownFor = null; // the device field's value (the target) the selector last showed the profile for
const NONE = ""; // the selector's value when no profile is in force
const typedDevice = () => $("device-input").value.trim().toLowerCase();

async function loadProfiles() {
  library = await api("GET", "/profiles");
  const select = $("profile-select");
  select.replaceChildren(el("option", { value: NONE }, "none (faithful): choose a profile"),
    ...library.map((p) => el("option", { value: p.name }, p.name)));
  syncProfile();
}

function showSummary() {
  const chosen = library.find((p) => p.name === $("profile-select").value);
  $("profile-summary").textContent = chosen ? chosen.summary : "";
}

function hostOf(device) { // "10.0.0.2:5060" -> "10.0.0.2", "[::1]:5060" -> "::1", "::1" -> "::1"
  const v6 = /^\[(.*)\](:\d+)?$/.exec(device);
  if (v6) return v6[1];
  return (device.match(/:/g) || []).length === 1 ? device.replace(/:\d+$/, "") : device;
}

// What is in force for the selector's target: {entry, own} (entry null: no profile).
function inForce() {
  if (!active) return null;
  const device = typedDevice();
  if (device) {
    const own = active.devices[device] || active.devices[hostOf(device)];
    if (own) return { entry: own, own: true, device };
    return { entry: active.global, own: false, device };
  }
  return { entry: active.global, own: false, device: null };
}

// The target is read from the field at each refresh, not only on its events: a field emptied without an `input`
// event (some keyboards, autofill, scripts fire only `change`) still moves the selector to the new target.
function syncProfile(force) {
  if (profileTouched && !force && typedDevice() === shownFor) return;
  profileTouched = false;
  shownFor = typedDevice();
  const now = inForce();
  const select = $("profile-select");
  if (now && library.length) {
    const name = now.entry ? now.entry.name : NONE;
    if (!select.querySelector(`option[value="${CSS.escape(name)}"]`)) {
      select.append(el("option", { value: name }, name)); // a profile loaded from a file, not in the library
    }
    select.value = name;
  }
  const target = $("profile-target");
  if (!now) target.textContent = "";
  else if (!now.device) target.textContent = "Showing what all devices get.";
  else target.textContent = now.own ? `Showing ${now.device}'s own profile.`
    : `${now.device} has no profile of its own: showing the global one it follows.`;
  showSummary();
}

async function loadActive() {
  active = await api("GET", "/active");
  $("active-global").textContent = active.global ? active.global.name : "none (faithful)";
  const list = $("active-devices");
  list.replaceChildren(...Object.entries(active.devices).map(([dev, entry]) =>
    el("li", { "data-device": dev }, `${dev}: `, el("strong", {}, entry ? entry.name : "none"))));
  syncProfile();
  const holds = await api("GET", "/holds");
  $("hold-count").textContent = String(holds.length);
}

function chosenProfile() {
  const name = $("profile-select").value;
  if (name === NONE) { problem("Choose a profile from the list first."); return null; }
  return name;
}

async function setProfile(name, device) {
  if (device) {
    const path = "/devices/" + encodeURIComponent(device) + "/profile";
    if (name === null) await api("DELETE", path); else await api("PUT", path, { profile: name });
  } else {
    await api("PUT", "/active", { profile: name });
  }
  profileTouched = false;
  await loadActive();
}

function deviceInput() {
  const value = $("device-input").value.trim();
  if (!value) { problem("Type the device's IP or IP:PORT first (the flows list shows them)."); return null; }
  return value;
}

// -- flows -------------------------------------------------------------------------------------------------
async function loadFlows() {
  const flows = await api("GET", "/flows");
  const body = $("flows").tBodies[0];
  body.replaceChildren(...flows.map((f) => el("tr", { "data-flow": f.id },
    el("td", {}, `${f.id} ${f.transport}`), el("td", {}, f.device), el("td", {}, String(f.messages)))));
  $("flows-empty").hidden = flows.length > 0;
  const devices = new Set(flows.map((f) => f.device));
  for (const f of flows) devices.add(f.device.replace(/:\d+$/, "").replace(/^\[(.*)\]$/, "$1"));
  $("device-options").replaceChildren(...[...devices].map((d) => el("option", { value: d })));
}

// -- the ladder ----------------------------------------------------------------------------------------------
// One column per device (GET /api/ladder names each row's device), then faultlab, the PBX and the others.
const AFTER_DEVICES = ["faultlab", "pbx"];
let guidedCall = null; // the guided run's call: shown when no call is picked

async function loadLadder() {
  const picked = $("call-select").value || guidedCall;
  const data = await api("GET", "/api/ladder" + (picked ? "?call=" + encodeURIComponent(picked) : ""));
  const select = $("call-select");
  const keep = select.value;
  select.replaceChildren(el("option", { value: "" }, "newest call"),
    ...data.calls.slice().reverse().map((c) =>
      el("option", { value: c.call_id }, `${c.first || "?"} ${c.call_id}`)));
  select.value = data.calls.some((c) => c.call_id === keep) ? keep : "";
  renderLadder(data.rows, data.call, data.devices || []);
}

// the column of one end of a row: a device's own column for the "device" party
const column = (r, party) => (party === "device" && r.device ? r.device : party);

function columnLabel(name, devices) {
  if (!devices.includes(name)) return [name === "pbx" ? "PBX" : name];
  const m = /^(\[.*\]|[^:]*):(\d+)$/.exec(name);
  return m ? [m[1], ":" + m[2]] : [name]; // address and port on two lines: four columns fit a phone
}

function renderLadder(rows, call, devices) {
  const columns = devices.slice();
  const generic = rows.some((r) => [r.from, r.to].some((p) => p === "device" && !r.device));
  if (generic || !columns.length) columns.push("device");
  columns.push(...AFTER_DEVICES);
  for (const r of rows) for (const p of [r.from, r.to]) {
    const c = p && column(r, p);
    if (c && !columns.includes(c)) columns.push(c);
  }
  const n = columns.length;
  const x = (c) => ((columns.indexOf(c) + 0.5) / n) * 100;
  const lanes = () => columns.map((c) => el("div", { class: "lane", style: `left:${x(c)}%` }));
  $("ladder-parties").replaceChildren(...columns.map((c) => {
    const [first, second] = columnLabel(c, devices);
    const parts = first.split(/(?<=[.:])/); // a line may break after a dot or a colon of an address
    const label = parts.flatMap((part, i) => (i ? [el("wbr"), part] : [part]));
    return el("span", { title: c, "data-column": c }, ...label, second ? el("small", {}, second) : null);
  }));
  $("ladder-parties").style.gridTemplateColumns = `repeat(${n}, 1fr)`; // cell i is centred at x(column i)
  $("ladder").dataset.call = call || "";
  $("ladder").dataset.columns = String(n);
  $("ladder-rows").replaceChildren(...rows.map((r) => {
    const fault = r.fault || null;
    const cls = ["row"];
    if (fault) cls.push("fault");
    if (fault && fault.startsWith("✗")) cls.push("lost");
    const from = column(r, r.from), to = r.to ? column(r, r.to) : "";
    const box = el("div", { class: "lanes" }, ...lanes());
    if (to && to !== from) {
      const a = x(from), b = x(to);
      const lo = Math.min(a, b), hi = Math.max(a, b);
      box.append(el("div", { class: "arrow " + (b > a ? "right" : "left"), style: `left:${lo}%;width:${hi - lo}%` },
        el("span", { class: "label" }, r.label || "")));
    } else {
      box.append(el("div", { class: "note", style: `margin-left:${x(from)}%` }, r.note || r.label || ""));
    }
    const row = el("div", { class: cls.join(" "), "data-label": r.label || "", "data-from": from, "data-to": to,
                             "data-device": r.device || "" },
      el("span", { class: "t" }, r.t.toFixed(3)), box);
    if (fault) row.append(el("div", { class: "fault-text" }, fault + (r.note && r.to ? " — " + r.note : "")));
    return row;
  }));
  $("ladder-empty").hidden = rows.length > 0;
}

// -- guided scenarios --------------------------------------------------------------------------------------
let scenarios = [];
let guided = { phase: "idle" };
let guidedAt = 0; // when the status arrived (performance.now()), for the countdown

async function loadScenarios() {
  scenarios = await api("GET", "/api/scenarios");
  $("scenario-select").replaceChildren(...scenarios.map((s) =>
    el("option", { value: s.id }, `${s.id} ${s.title}`)));
  aboutScenario();
}

function aboutScenario() {
  const s = scenarios.find((x) => x.id === $("scenario-select").value);
  if (!s) { $("scenario-about").textContent = ""; return; }
  const faults = s.faults ? `faults: ${s.faults}` : "no faults";
  const ends = s.expect.end.length ? `expected end: ${s.expect.end.join(" or ")} (${s.expect.by.join("; ")})`
    : "expected: no end";
  $("scenario-about").textContent = `${faults}; ${ends}; transports: ${s.transports.join(", ")}`;
}

async function loadGuided() {
  guided = await api("GET", "/api/guided");
  guidedAt = performance.now();
  renderGuided();
}

function renderGuided() {
  const g = guided;
  const active = g.phase !== "idle";
  $("guided-run").hidden = !active;
  $("guided-stop").hidden = !active;
  $("guided-start").textContent = active ? "Restart with this scenario" : "Start";
  guidedCall = g.call ? g.call.call_id : null;
  if (!active) { $("verdict").hidden = true; return; }
  $("guided-prompt").textContent = g.prompt || "";
  $("guided-prompt").dataset.phase = g.phase;
  countdown();
  $("guided-aor").textContent = g.aor ? `The iPhone registered as ${g.aor.aor} (from ${g.aor.from})` : "";
  $("guided-steps").replaceChildren(...g.steps.map((st) => {
    const current = !st.done && g.steps.find((x) => !x.done) === st;
    const li = el("li", { class: st.done ? "done" : (current ? "current" : ""), "data-step": st.id }, st.text);
    if (st.hint) li.append(el("div", { class: "muted" }, st.hint));
    return li;
  }));
  $("guided-notes").replaceChildren(...(g.notes || []).map((n) => el("li", {}, n)),
    ...(g.call ? [el("li", {}, `call ${g.call.call_id}, picked from ${g.call.picked_from}`)] : []));
  renderVerdict(g.verdict);
}

function countdown() {
  const next = guided.next;
  if (!next || guided.phase === "done") { $("guided-next").textContent = ""; return; }
  const left = next.in - (performance.now() - guidedAt) / 1000;
  $("guided-next").textContent = left > 0 ? `Next: ${next.text} — in ${left.toFixed(1)} s` : "";
  if (left <= 0) soon("guided", loadGuided, 0);
}

function renderVerdict(v) {
  const box = $("verdict");
  if (!v) { box.hidden = true; box.removeAttribute("data-passed"); return; }
  box.hidden = false;
  box.dataset.passed = String(v.passed);
  box.replaceChildren(
    el("h3", {}, v.passed ? "PASS" : "FAIL"),
    el("p", { class: "muted" }, `${v.why}; call ${v.call_id}`),
    ...v.checks.map((c) => {
      const mark = !c.judged ? "—" : (c.passed ? "✓" : "✗");
      const div = el("div", { class: "check " + (!c.judged ? "skip" : (c.passed ? "pass" : "fail")),
                              "data-check": c.check },
        el("strong", {}, `${mark} ${c.check}`), el("div", {}, c.message));
      if (c.evidence && c.evidence.length) {
        div.append(el("details", {}, el("summary", {}, "evidence"), el("pre", {}, c.evidence.join("\n"))));
      }
      return div;
    }));
}

async function startGuided() {
  const body = { scenario: $("scenario-select").value };
  const device = $("guided-device").value.trim();
  if (device) body.device = device;
  guided = await api("POST", "/api/guided/start", body);
  guidedAt = performance.now();
  renderGuided();
  await loadActive();
}

async function stopGuided() {
  await api("POST", "/api/guided/stop", {});
  guided = { phase: "idle" };
  renderGuided();
  await loadActive();
}

// -- the live timeline: EventSource without a token; with one, fetch (EventSource cannot send headers) -----
function onEvent(ev) {
  if (["received", "sent", "dropped", "responded", "held", "fault", "device"].includes(ev.kind)) {
    soon("ladder", loadLadder);
  }
  if (ev.kind === "flow-open" || ev.kind === "flow-close") soon("flows", loadFlows);
  if (ev.kind === "profile" || ev.kind === "held" || ev.kind === "released" || ev.kind === "guided") {
    soon("active", loadActive);
  }
  if (guided.phase !== "idle") soon("guided", loadGuided);
}

function setLive(on) {
  const live = $("live");
  live.textContent = on ? "live" : "offline";
  live.classList.toggle("off", !on);
}

function follow() {
  if (!token && window.EventSource) {
    const source = new EventSource("/events");
    source.onopen = () => { setLive(true); refreshAll(); };
    source.onmessage = (m) => { try { onEvent(JSON.parse(m.data)); } catch (err) { console.warn(err); } };
    source.onerror = () => setLive(false); // EventSource reconnects by itself
    return;
  }
  followWithFetch();
}

async function followWithFetch() {
  for (;;) {
    try {
      const resp = await fetch("/events", { headers: { Authorization: "Bearer " + token,
                                                       Accept: "application/x-ndjson" } });
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      setLive(true);
      refreshAll();
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, nl).trim();
          buffer = buffer.slice(nl + 1);
          if (line) onEvent(JSON.parse(line));
        }
      }
    } catch (err) {
      console.warn("event stream", err);
    }
    setLive(false);
    await new Promise((r) => setTimeout(r, 2000));
  }
}

function refreshAll() {
  soon("active", loadActive, 0);
  soon("flows", loadFlows, 0);
  soon("ladder", loadLadder, 0);
  soon("guided", loadGuided, 0);
}

// -- wiring --------------------------------------------------------------------------------------------------
function on(id, fn) {
  $(id).addEventListener("click", async () => {
    const button = $(id);
    button.disabled = true;
    problem(""); // a new tap: the last one's hint or error no longer applies
    try { await fn(); } catch (err) { console.warn(id, err); } finally { button.disabled = false; }
  });
}

on("apply-global", () => { const p = chosenProfile(); return p && setProfile(p, null); });
on("clear-global", () => setProfile(null, null));
on("apply-device", () => {
  const d = deviceInput();
  const p = d && chosenProfile();
  return p && setProfile(p, d);
});
on("clear-device", () => { const d = deviceInput(); return d && setProfile(null, d); });
on("release", async () => { await api("POST", "/holds/release", {}); await loadActive(); });
on("guided-start", startGuided);
on("guided-stop", stopGuided);
$("profile-select").addEventListener("change", () => { profileTouched = true; showSummary(); });
for (const kind of ["input", "change"]) { // a new target: show what is in force for it
  $("device-input").addEventListener(kind, () => { if (typedDevice() !== shownFor) syncProfile(true); });
}
$("scenario-select").addEventListener("change", aboutScenario);
$("call-select").addEventListener("change", () => soon("ladder", loadLadder, 0));

(async function main() {
  try {
    await Promise.all([loadProfiles(), loadScenarios()]);
  } catch (err) {
    console.warn(err);
  }
  refreshAll();
  follow();
  setInterval(() => soon("flows", loadFlows), 5000);
  setInterval(() => { if (guided.phase !== "idle" && guided.phase !== "done") soon("guided", loadGuided); }, 1000);
  setInterval(countdown, 250);
  document.body.dataset.ready = "true";
})();
