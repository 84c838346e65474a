// The farmers' web app: sign in with the farm's key, the farm on a map, live events, fence editing.
import "leaflet/dist/leaflet.css";
import "@geoman-io/leaflet-geoman-free/dist/leaflet-geoman.css";
import "./app.css";
import L from "./leaflet-global.js";
import "@geoman-io/leaflet-geoman-free";
import { Api, ApiError, pool } from "./api.js";
import { animalMarker, createMap, escapeHtml, fenceLayer, fitLabels, STATES, stateOf } from "./farmmap.js";
import { follow } from "./live.js";
import { Editor } from "./editor.js";
import { startAdmin } from "./admin.js";

const $ = (id) => document.getElementById(id);
const KEY = "fencex.key";
const FEED_MAX = 200;
const FENCES_EVERY_MS = 60_000;
const POSITIONS_EVERY_MS = 15_000;
const ALERT_WORDS = { out: "out", silent: "silent", battery_low: "low battery" };

export const farm = {
  api: null,
  map: null,
  fences: new Map(), // id -> { feature, etag, layer }
  animals: new Map(), // id -> { device, marker }
  occupancy: {},
  alerts: [],
  stop: null,
};

async function loadConfig() {
  try {
    const r = await fetch("/app/config.json", { cache: "no-store" });
    return r.ok ? await r.json() : {};
  } catch {
    return {};
  }
}

// ---- sign in / out ----

async function signIn(key) {
  const api = new Api(key);
  try {
    const { date } = await api.get("/fences?limit=1");
    // the stream starts from here (the API's clock, a margin for its rounding to the second): an event
    // while the farm loads is not lost between the reads and the stream; the feed drops the doubles
    const t = Date.parse(date || "");
    return { role: "farm", api, since: Number.isNaN(t) ? null : `${t - 2000}-0` };
  } catch (e) {
    if (!(e instanceof ApiError) || e.status !== 401) throw e;
  }
  try {
    // the admin key is refused for farm data: is it the operator's? (404: no such farm, so the key is right)
    await api.get("/admin/tenants/-/keys");
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return { role: "admin", api };
  }
  throw new ApiError(401, { detail: "This key is not a farm's key. Check it and try again." });
}

function signOut() {
  sessionStorage.removeItem(KEY);
  if (farm.stop) farm.stop();
  location.reload();
}

let started = false;

async function start(key) {
  const { role, api, since } = await signIn(key);
  if (started) return; // signed in meanwhile (the form, while a reload was trying again)
  started = true;
  sessionStorage.setItem(KEY, key);
  $("signin").hidden = true;
  if (role === "admin") {
    $("admin").hidden = false;
    startAdmin(api, signOut);
    return;
  }
  farm.api = api;
  $("app").hidden = false;
  const config = await loadConfig();
  farm.map = createMap($("map"), config);
  const labels = () => fitLabels(farm.map, [...farm.fences.values()].map((f) => f.layer));
  farm.map.on("zoomend", labels);
  farm.map.on("moveend", () => debounce("in-view", 400, animalsInView));
  farm.labels = labels;
  farm.editor = new Editor(farm, { refresh: refreshFences, select: showTab });
  setupTabs();
  $("signout").addEventListener("click", signOut);
  await loadFarm();
  await refreshAlerts();
  await recentEvents();
  const stallMs = ((config.stream && config.stream.stall_s) || 45) * 1000;
  farm.stop = follow(api, { onEvent, onStatus, stallMs, since });
  // fences changed elsewhere (another farmer, the API) carry no event: read them again now and then,
  // and when the page comes back to the front
  setInterval(() => document.visibilityState === "visible" && refreshFences().catch(() => {}), FENCES_EVERY_MS);
  setInterval(() => document.visibilityState === "visible" && animalsInView(), POSITIONS_EVERY_MS);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") refreshFences().catch(() => {});
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The fences and the animals, read again until they come (a dead spot while the farm loads: not an
// empty map with no word, and no second sign-in over the map made already).
async function loadFarm() {
  for (let delay = 1000; ; delay = Math.min(delay * 2, 15000)) {
    try {
      await refreshFences(true);
      await loadAnimals();
      return;
    } catch (e) {
      onStatus("offline: trying again");
      $("conn").title = e.message;
      await sleep(delay);
    }
  }
}

// What a farmer pastes is not always only the key: spaces or a no-break space around it, a zero-width
// space anywhere (from a message or a mail). A zero-width character is never part of a key.
export function cleanKey(text) {
  return text.replace(/[\u200b-\u200d\u2060\ufeff]/g, "").trim();
}

function onStatus(text) {
  const el = $("conn");
  el.textContent = text;
  el.dataset.state = text;
}

// ---- fences ----

export async function refreshFences(fit = false) {
  const features = await farm.api.all("/fences", "features");
  const seen = new Set();
  for (const feature of features) {
    seen.add(feature.id);
    const old = farm.fences.get(feature.id);
    if (old && old.feature.properties.version === feature.properties.version) continue;
    if (old && farm.editor.editing(feature.id)) continue; // the farmer's unsaved shape stays
    if (old) old.layer.remove();
    const layer = fenceLayer(feature).addTo(farm.map);
    layer.on("click", () => farm.editor.open(feature.id));
    farm.fences.set(feature.id, { feature, etag: `"${feature.properties.version}"`, layer });
  }
  for (const [id, f] of farm.fences) {
    if (!seen.has(id) && !farm.editor.editing(id)) {
      f.layer.remove();
      farm.fences.delete(id);
    }
  }
  if (fit && features.length) {
    const bounds = L.featureGroup([...farm.fences.values()].map((f) => f.layer)).getBounds();
    farm.map.fitBounds(bounds, { padding: [20, 20], maxZoom: 17, animate: false });
  }
  farm.labels();
  await refreshOccupancy();
}

async function refreshOccupancy() {
  try {
    farm.occupancy = (await farm.api.get("/occupancy")).data;
  } catch {
    /* the counts stay as they were */
  }
  await refreshGrazing();
  renderFenceList();
}

// Each fence's animal-hours over the farm's last 7 days (GET /grazing, every page).
async function refreshGrazing() {
  const hours = {};
  try {
    let cursor = null;
    do {
      const q = new URLSearchParams({ limit: "1000" });
      if (cursor) q.set("cursor", cursor);
      const { data } = await farm.api.get(`/grazing?${q}`);
      for (const f of data.fences) hours[f.fence_id] = f.animal_hours;
      cursor = data.next_cursor;
    } while (cursor);
    farm.grazing = hours;
  } catch {
    /* kept as they were */
  }
}

function renderFenceList() {
  const list = $("fences");
  const items = [...farm.fences.values()].sort((a, b) =>
    (a.feature.properties.name || a.feature.id).localeCompare(b.feature.properties.name || b.feature.id),
  );
  list.replaceChildren(
    ...items.map(({ feature }) => {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.className = `row kind-${feature.properties.kind}`;
      const n = farm.occupancy[feature.id] ?? 0;
      const grazed = (farm.grazing || {})[feature.id] ?? 0;
      b.innerHTML = `<span class="name">${escapeHtml(feature.properties.name || feature.id)}</span>
        <span class="meta">${escapeHtml(feature.properties.kind)} · <span class="occupancy">${n}</span> inside ·
        <span class="grazing">${formatHours(grazed)}</span> animal-hours in 7 days</span>`;
      b.addEventListener("click", () => {
        farm.map.fitBounds(farm.fences.get(feature.id).layer.getBounds(), { maxZoom: 17, padding: [40, 40] }); // corners within reach of a finger
        farm.editor.open(feature.id);
      });
      li.append(b);
      return li;
    }),
  );
}

// ---- animals ----

// No route lists a farm's animals with their states. Their positions come from the devices-in-area
// query over the map's view (or the fences' area), their states from the alert lists (out, silent,
// battery low; any other animal is in): two requests for a farm of any size. An animal in an alert
// list but outside the area is read on its own (GET /devices/{id}).
async function loadAnimals() {
  const states = await alertStates();
  const { data } = await farm.api.request("POST", "/query/devices", { body: { polygon: areaOfInterest() } });
  const found = new Set();
  for (const d of data) {
    found.add(d.device_id);
    placeAnimal({ ...d, ...stateFrom(states, d.device_id) });
  }
  const elsewhere = [...states.keys()].filter((id) => !found.has(id) && !farm.animals.has(id));
  await pool(elsewhere, 6, readAnimal);
  farm.states = states;
}

// device id -> its alert kinds, from every page of GET /alerts
async function alertStates() {
  const states = new Map();
  let cursor = null;
  do {
    const q = new URLSearchParams({ limit: "1000" });
    if (cursor) q.set("cursor", cursor);
    const { data } = await farm.api.get(`/alerts?${q}`);
    for (const a of data.alerts) states.set(a.device_id, new Set([...(states.get(a.device_id) || []), a.kind]));
    cursor = data.next_cursor;
  } while (cursor);
  return states;
}

function stateFrom(states, id) {
  const kinds = states.get(id) || new Set();
  return { out: kinds.has("out"), silent: kinds.has("silent"), battery_low: kinds.has("battery_low") };
}

// The map's view, or where the fences are when the view is wider than a farm (a polygon for the query)
function areaOfInterest() {
  let b = farm.map.getBounds();
  if (b.getEast() - b.getWest() > 2 || b.getNorth() - b.getSouth() > 2) {
    const layers = [...farm.fences.values()].map((f) => f.layer);
    b = layers.length ? L.featureGroup(layers).getBounds() : L.latLngBounds([[-1, -1], [1, 1]]);
  }
  b = b.pad(0.5);
  const w = Math.max(b.getWest(), -180), e = Math.min(b.getEast(), 180);
  const s = Math.max(b.getSouth(), -85), n = Math.min(b.getNorth(), 85);
  return { type: "Polygon", coordinates: [[[w, s], [e, s], [e, n], [w, n], [w, s]]] };
}

// The animals in view, again: as the farmer pans, and every POSITIONS_EVERY_MS (the stream carries
// events, not every fix: an animal grazing inside its paddock moves on the map this way).
async function animalsInView() {
  try {
    const { data } = await farm.api.request("POST", "/query/devices", { body: { polygon: areaOfInterest() } });
    for (const d of data) {
      const known = farm.animals.has(d.device_id);
      placeAnimal(known ? d : { ...d, ...stateFrom(farm.states || new Map(), d.device_id) }); // known: its state stays
    }
  } catch {
    /* the next move asks again */
  }
}

async function readAnimal(id) {
  try {
    const { data } = await farm.api.get(`/devices/${encodeURIComponent(id)}`);
    placeAnimal(data);
    return data;
  } catch (e) {
    if (!(e instanceof ApiError) || e.status !== 404) throw e;
    return null;
  }
}

function placeAnimal(device) {
  let a = farm.animals.get(device.device_id);
  if (!a) {
    const marker = animalMarker(device).addTo(farm.map);
    marker.on("click", () => showAnimal(device.device_id));
    a = { device, marker };
    farm.animals.set(device.device_id, a);
  }
  a.device = { ...a.device, ...device };
  a.marker.setLatLng([a.device.lat, a.device.lon]);
  const state = stateOf(a.device);
  const el = a.marker.getElement();
  if (el) {
    el.classList.remove(...Object.keys(STATES).map((s) => `animal-${s}`));
    el.classList.add(`animal-${state}`);
  }
  a.marker.setTooltipContent(`${escapeHtml(device.device_id)}: ${STATES[state]}`);
}

async function showAnimal(id) {
  await readAnimal(id).catch(() => null); // its battery, fences and last fix, as they are now
  const a = farm.animals.get(id);
  if (!a) return;
  const d = a.device;
  const fences = (d.fences || []).map((f) => escapeHtml(farm.fences.get(f.fence_id)?.feature.properties.name || f.fence_id));
  const box = document.createElement("div");
  box.className = "animal-popup";
  box.innerHTML =
    `<strong>${escapeHtml(id)}</strong><br>${STATES[stateOf(d)]}` +
    (d.battery != null ? `<br>battery ${Math.round(d.battery)}%` : "") +
    (d.last_seen ? `<br>last fix ${escapeHtml(shortTime(d.last_seen))}` : "") +
    (fences.length ? `<br>in ${fences.join(", ")}` : "");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "track-button";
  const showing = farm.track && farm.track.id === id;
  button.textContent = showing ? "Hide its track" : "Show its track";
  button.addEventListener("click", () => (farm.track && farm.track.id === id ? hideTrack() : showTrack(id)));
  const note = document.createElement("p");
  note.className = "track-note";
  note.setAttribute("role", "status");
  if (showing) note.textContent = farm.track.note;
  box.append(button, note);
  L.popup().setLatLng([d.lat, d.lon]).setContent(box).openOn(farm.map);
}

// ---- an animal's recent track: the farm's track window, every page joined into one line ----

async function showTrack(id) {
  hideTrack();
  const coordinates = [];
  const times = [];
  let cursor = null;
  try {
    do {
      const q = new URLSearchParams({ format: "line", limit: "2000" });
      if (cursor) q.set("cursor", cursor);
      const { data } = await farm.api.get(`/devices/${encodeURIComponent(id)}/track?${q}`);
      const g = data.geometry;
      if (g && g.type === "LineString") coordinates.push(...g.coordinates);
      else if (g && g.type === "Point") coordinates.push(g.coordinates);
      times.push(...data.properties.times);
      cursor = data.next_cursor;
    } while (cursor);
  } catch (e) {
    trackNote(e.status === 404 ? "No track: no fix from this collar yet." : e.message);
    return;
  }
  const latlngs = coordinates.map(([lon, lat]) => [lat, lon]);
  const layer = L.layerGroup().addTo(farm.map);
  if (latlngs.length) {
    L.polyline(latlngs, { className: "track", weight: 3, interactive: false }).addTo(layer);
    L.circleMarker(latlngs[0], { className: "track-start", radius: 5, interactive: false }).addTo(layer);
  }
  const note = latlngs.length
    ? `${latlngs.length} fixes from ${shortTime(times[0])} to ${shortTime(times[times.length - 1])}`
    : "No fix in the track window.";
  farm.track = { id, layer, note };
  trackNote(note);
  const button = document.querySelector(".animal-popup .track-button");
  if (button) button.textContent = "Hide its track";
}

function hideTrack() {
  if (farm.track) farm.track.layer.remove();
  farm.track = null;
  const button = document.querySelector(".animal-popup .track-button");
  if (button) button.textContent = "Show its track";
  trackNote("");
}

function trackNote(text) {
  const note = document.querySelector(".animal-popup .track-note");
  if (note) note.textContent = text;
}

// ---- alerts ----

async function refreshAlerts() {
  try {
    const { data } = await farm.api.get("/alerts?limit=1000");
    farm.alerts = data.alerts;
    renderAlerts(data);
  } catch {
    /* kept as they were */
  }
}

function renderAlerts(data) {
  const alerts = [...data.alerts].sort((a, b) => (a.since < b.since ? 1 : a.since > b.since ? -1 : 0));
  const total = Object.values(data.counts || {}).reduce((n, c) => n + c, 0) || alerts.length;
  $("alert-count").textContent = String(total);
  document.title = total ? `(${total}) fencex` : "fencex";
  $("alerts-empty").hidden = alerts.length > 0;
  $("alerts").replaceChildren(
    ...alerts.map((a) => {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.className = `row alert alert-${a.kind}`;
      b.innerHTML = `<span class="name">${escapeHtml(a.device_id)}</span>
        <span class="meta">${escapeHtml(ALERT_WORDS[a.kind] || a.kind)} since ${escapeHtml(shortTime(a.since))}</span>`;
      b.addEventListener("click", () => {
        const an = farm.animals.get(a.device_id);
        if (an) {
          farm.map.setView(an.marker.getLatLng(), Math.max(farm.map.getZoom(), 16));
          showAnimal(a.device_id);
        }
      });
      li.append(b);
      return li;
    }),
  );
}

// ---- live events ----

const seen = new Set(); // event ids in the feed: the history read at start and the stream may overlap

// The feed starts with the farm's recent history (the stream brings what comes after).
async function recentEvents() {
  try {
    const { data } = await farm.api.get(`/events?limit=${FEED_MAX / 4}`);
    data.forEach(addToFeed);
  } catch {
    /* the stream fills the feed */
  }
}

const later = new Map();
function debounce(name, ms, fn) {
  clearTimeout(later.get(name));
  later.set(name, setTimeout(fn, ms));
}

const STATE_OF_EVENT = {
  escape: { out: true },
  return: { out: false },
  enter: {},
  exit: {},
  silent: { silent: true },
  resumed: { silent: false },
  battery_low: { battery_low: true },
  battery_ok: { battery_low: false },
};

function onEvent(e) {
  if (e.event_id && seen.has(e.event_id)) return; // in the feed already (from the history read at start)
  addToFeed(e);
  if (e.type === "transferred") {
    const a = farm.animals.get(e.device_id);
    if (a) a.marker.remove();
    farm.animals.delete(e.device_id);
  } else if (e.type in STATE_OF_EVENT && typeof e.lon === "number" && typeof e.lat === "number") {
    const known = farm.animals.get(e.device_id);
    const change = STATE_OF_EVENT[e.type];
    if (known || e.type !== "exit") {
      placeAnimal({ device_id: e.device_id, lon: e.lon, lat: e.lat, ...(known ? {} : { out: false }), ...change });
    }
    if (!known) debounce(`device:${e.device_id}`, 300, () => readAnimal(e.device_id));
    if (farm.track && farm.track.id === e.device_id && !e.late) {
      const line = farm.track.layer.getLayers().find((l) => l instanceof L.Polyline);
      if (line) line.addLatLng([e.lat, e.lon]);
    }
  }
  if (["escape", "return", "silent", "resumed", "battery_low", "battery_ok", "transferred"].includes(e.type)) {
    debounce("alerts", 300, refreshAlerts);
  }
  if (["enter", "exit"].includes(e.type)) debounce("occupancy", 1000, refreshOccupancy);
  if (farm.editor.current && e.fence_id === farm.editor.current.id) debounce("fence-grazing", 1000, () => farm.editor.grazing());
}

// an event in the farm's words (as ./dev stack prints them): with its fence, or without one
const EVENT_WORDS = {
  enter: ["entered", "entered a fence"],
  exit: ["left", "left a fence"],
  dwell: ["has stayed in", "has stayed"],
  escape: ["escaped from", "escaped"],
  return: ["returned to", "is back in its pasture"],
  silent: ["went silent", "went silent"],
  resumed: ["is heard again", "is heard again"],
  battery_low: ["is low on battery", "is low on battery"],
  battery_ok: ["has a good battery again", "has a good battery again"],
  transferred: ["moved to another farm", "moved to another farm"],
  retract: ["— an earlier event was withdrawn (late fixes)", "— an earlier event was withdrawn (late fixes)"],
};

function describe(e) {
  const fence = e.fence_id ? farm.fences.get(e.fence_id)?.feature.properties.name || e.fence_id : "";
  const [withFence, alone] = EVENT_WORDS[e.type] || [e.type, e.type];
  const words = fence && withFence !== alone ? `${withFence} ${fence}` : alone;
  const out = e.type === "escape" && typeof e.distance_m === "number" ? `, ${Math.round(e.distance_m)} m out` : "";
  return `${words}${out}${e.late ? " (late)" : ""}`;
}

function addToFeed(e) {
  if (e.event_id) {
    if (seen.has(e.event_id)) return;
    if (seen.size > 10000) seen.clear(); // only the start's overlap matters
    seen.add(e.event_id);
  }
  const li = document.createElement("li");
  li.className = `event event-${e.type}`;
  if (e.event_id) li.dataset.eventId = e.event_id;
  if (e.type === "retract" && e.retracts) {
    seen.delete(e.retracts); // a later upload may bring it back, with the same id
    // a late upload showed this event did not happen as published: struck through, its replacement follows
    const withdrawn = [...$("feed").children].find((x) => x.dataset.eventId === e.retracts);
    if (withdrawn) withdrawn.classList.add("retracted");
  }
  li.innerHTML = `<time>${escapeHtml(shortTime(e.ts || ""))}</time>
    <span><strong>${escapeHtml(e.device_id || "")}</strong> ${escapeHtml(describe(e))}</span>`;
  const feed = $("feed");
  feed.prepend(li);
  while (feed.children.length > FEED_MAX) feed.lastElementChild.remove();
  $("feed-empty").hidden = true;
}

export function formatHours(h) {
  return h >= 10 ? String(Math.round(h)) : String(Math.round(h * 10) / 10);
}

function shortTime(ts) {
  const d = new Date(ts);
  if (Number.isNaN(d.getTime())) return ts;
  return d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

// ---- tabs ----

function setupTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  tabs.forEach((t, i) => {
    t.addEventListener("click", () => showTab(t.id.slice(4)));
    t.addEventListener("keydown", (ev) => {
      const step = ev.key === "ArrowRight" ? 1 : ev.key === "ArrowLeft" ? -1 : 0;
      if (!step) return;
      const next = tabs[(i + step + tabs.length) % tabs.length];
      showTab(next.id.slice(4));
      next.focus();
    });
  });
}

export function showTab(name) {
  for (const t of document.querySelectorAll('[role="tab"]')) {
    const on = t.id === `tab-${name}`;
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
    $(t.getAttribute("aria-controls")).hidden = !on;
  }
}

// ---- boot ----

$("signin").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("signin-error").textContent = "";
  const key = cleanKey($("key").value);
  if (/[^\x20-\x7e]/.test(key)) {
    $("signin-error").textContent = "The key holds a character no key has: copy it again, or type it.";
    return;
  }
  try {
    await start(key);
  } catch (e) {
    $("signin-error").textContent = e.message;
  }
});

// A reload (or the tab come back): the key kept in the tab signs in again. Only a refused key is
// dropped; with no connection (a dead spot) the page says so and tries again.
async function resume(key) {
  for (let delay = 1000; ; delay = Math.min(delay * 2, 15000)) {
    try {
      return await start(key);
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        sessionStorage.removeItem(KEY);
        $("signin").hidden = false;
        $("app").hidden = true;
        $("signin-error").textContent = e.message;
        return;
      }
      $("signin").hidden = false;
      $("signin-error").textContent = `No answer from fencex (${e.message}): trying again.`;
      await sleep(delay);
    }
  }
}

const saved = sessionStorage.getItem(KEY);
if (saved) resume(saved);
