// Drawing, reshaping (holes too) and deleting fences; the form; saving with If-Match; the 412
// choice between the farmer's version and the stored one; importing GeoJSON or KML.
import L from "./leaflet-global.js";
import { kml } from "@tmcw/togeojson";
import { ApiError } from "./api.js";
import { escapeHtml, fenceLayer, fenceStyle } from "./farmmap.js";
import { fillMobs, saveMobs } from "./mobs.js";
import { fillSchedule, readSchedule, showWhen } from "./schedule.js";

const $ = (id) => document.getElementById(id);
const PROPS = ["name", "tags", "dwell_s", "exit_buffer_m", "kind", "schedule"];

export class Editor {
  constructor(farm, { refresh, select }) {
    this.farm = farm;
    this.map = farm.map;
    this.refresh = refresh;
    this.select = select;
    this.current = null; // { id (null: new), layer, etag }
    this.theirs = null; // the stored fence's layer while a conflict is shown
    this.errorTip = null;
    this.importLayer = null;
    this.map.pm.setGlobalOptions({ allowSelfIntersection: true }); // the API judges shapes
    this.map.on("pm:create", (e) => this.created(e.layer));
    this.map.on("pm:cut", (e) => this.cut(e));
    $("new-fence").addEventListener("click", () => this.draw());
    $("fence-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.save();
    });
    $("cancel").addEventListener("click", () => this.close());
    $("delete").addEventListener("click", () => this.remove());
    $("reshape").addEventListener("click", () => this.reshape());
    $("add-corner").addEventListener("click", () => this.addCorner());
    $("finish-shape").addEventListener("click", () => this.finishCorners());
    $("cut-hole").addEventListener("click", () => this.cutHole());
    $("keep-mine").addEventListener("click", () => this.resolve(true));
    $("conflict").addEventListener("cancel", () => {
      // Escape: neither version chosen; the farmer's edit stays in the form, unsaved
      this.pending = null;
      this.clearTheirs();
      $("form-error").textContent = "Not saved: someone else changed this fence. Save again to choose.";
    });
    $("take-theirs").addEventListener("click", () => this.resolve(false));
    $("f-when").addEventListener("change", showWhen);
    $("import-file").addEventListener("change", (ev) => this.importFile(ev.target.files[0]));
  }

  editing(id) {
    return this.current !== null && this.current.id === id;
  }

  // ---- the form ----

  fill(props, id) {
    $("f-id").value = id || "";
    $("f-id").disabled = Boolean(this.current && this.current.id);
    $("f-name").value = props.name || "";
    $("f-kind").value = props.kind || "pasture";
    $("f-tags").value = (props.tags || []).join(", ");
    $("f-dwell").value = props.dwell_s ?? "";
    $("f-buffer").value = props.exit_buffer_m ?? "";
    fillSchedule(props.schedule || null);
  }

  props() {
    const num = (v) => (v.trim() === "" ? null : Number(v));
    const schedule = readSchedule();
    return {
      name: $("f-name").value.trim(),
      kind: $("f-kind").value,
      tags: $("f-tags").value.split(",").map((t) => t.trim()).filter(Boolean),
      dwell_s: num($("f-dwell").value),
      exit_buffer_m: num($("f-buffer").value),
      schedule,
    };
  }

  showForm(title, isNew) {
    this.select("edit");
    $("edit-hint").hidden = true;
    $("fence-form").hidden = false;
    $("form-title").textContent = title;
    $("delete").hidden = isNew;
    $("form-error").textContent = "";
  }

  // ---- choosing, drawing ----

  draw() {
    this.close();
    this.current = { id: null, layer: null, etag: null };
    this.fill({}, "");
    fillMobs(this.farm.api, null);
    this.showForm("New fence", true);
    $("draw-hint").hidden = false;
    $("save").disabled = true;
    this.corners = [];
    this.cornerCount();
    this.map.getContainer().classList.add("crosshair");
    // two quick taps on a phone are a double tap: the map zoomed in between two corners
    this.map.doubleClickZoom.disable();
    this.map.pm.enableDraw("Polygon", { allowSelfIntersection: true });
  }

  // Drawing without a pointer: a corner where the cross (the map's centre) is, moved with the keys.
  addCorner() {
    if (!this.current || this.current.id !== null || this.current.layer) return;
    this.corners.push(this.map.getCenter());
    if (this.draft) this.draft.setLatLngs(this.corners);
    else this.draft = L.polyline(this.corners, { className: "draft", dashArray: "6 4", interactive: false }).addTo(this.map);
    this.cornerCount();
  }

  cornerCount() {
    const n = (this.corners || []).length;
    $("corner-count").textContent = n ? `${n} corner${n === 1 ? "" : "s"}` : "";
    $("finish-shape").disabled = n < 3;
  }

  finishCorners() {
    if (!this.corners || this.corners.length < 3) return;
    const layer = L.polygon(this.corners).addTo(this.map);
    this.map.pm.disableDraw();
    this.clearCorners();
    this.created(layer);
  }

  clearCorners() {
    if (this.draft) this.draft.remove();
    this.draft = null;
    this.corners = [];
    this.cornerCount();
    this.map.getContainer().classList.remove("crosshair");
  }

  created(layer) {
    this.map.doubleClickZoom.enable();
    this.clearCorners();
    if (!this.current || this.current.id !== null) {
      layer.remove();
      return;
    }
    this.current.layer = layer;
    layer.setStyle(fenceStyle($("f-kind").value));
    $("draw-hint").hidden = true;
    $("save").disabled = false;
    $("f-name").focus();
  }

  open(id) {
    if (this.editing(id)) return;
    if (this.map.pm.globalDrawModeEnabled() || this.map.pm.globalCutModeEnabled()) return; // a corner, not a choice
    if (this.unsavedShape()) {
      // a finger that lands on the next paddock while dragging corners: the shape stays, unsaved work is kept
      $("form-error").textContent = "Save or cancel this shape first.";
      return;
    }
    const f = this.farm.fences.get(id);
    if (!f) return;
    this.close();
    this.current = { id, layer: f.layer, etag: f.etag };
    this.fill(f.feature.properties, id);
    fillMobs(this.farm.api, id);
    this.showForm(`Fence: ${f.feature.properties.name || id}`, false);
    $("save").disabled = false;
    this.grazing();
    f.layer.getElement()?.classList.add("selected");
  }

  // A shape being reshaped, or drawn and not saved yet: choosing another fence would throw it away.
  unsavedShape() {
    const c = this.current;
    if (!c || !c.layer) return false;
    return c.id === null || Boolean(c.layer.pm && c.layer.pm.enabled());
  }

  // The fence was deleted by someone else meanwhile: the farmer's shape and form stay, as a new fence
  // with the same id (Save puts it back).
  deletedMeanwhile() {
    const c = this.current;
    this.farm.fences.delete(c.id);
    c.id = null;
    c.etag = null;
    $("f-id").disabled = false;
    $("delete").hidden = true;
    $("fence-grazing").hidden = true;
    $("form-error").textContent = "Someone else deleted this fence meanwhile: Save puts yours back.";
  }

  // The fence's grazing over the farm's last 7 days, per day (GET /fences/{id}/grazing).
  async grazing() {
    const c = this.current;
    const box = $("fence-grazing");
    if (!c || !c.id) {
      box.hidden = true;
      return;
    }
    try {
      const { data } = await this.farm.api.get(`/fences/${encodeURIComponent(c.id)}/grazing`);
      if (!this.editing(c.id)) return;
      const days = [...data.days].sort((a, b) => (a.date < b.date ? 1 : -1));
      box.innerHTML =
        `<h3>Grazing, ${escapeHtml(data.from)} to ${escapeHtml(data.to)} (${escapeHtml(data.timezone)})</h3>` +
        `<p><strong class="grazing-total">${data.total.animal_hours.toFixed(1)}</strong> animal-hours` +
        (days.length
          ? `</p><table class="compare"><thead><tr><th>Day</th><th>Animal-hours</th><th>Mobs</th></tr></thead><tbody>${days
              .map((d) => `<tr><td>${escapeHtml(d.date)}</td><td>${d.animal_hours.toFixed(1)}</td><td>${d.mobs.length}</td></tr>`)
              .join("")}</tbody></table>`
          : ": no animal inside yet.</p>");
      box.hidden = false;
    } catch {
      box.hidden = true;
    }
  }

  reshape() {
    const c = this.current;
    if (!c || !c.layer) return;
    c.layer.pm.enable({ allowSelfIntersection: true });
  }

  cutHole() {
    const c = this.current;
    if (!c || !c.layer) return;
    this.map.pm.enableGlobalCutMode({ layersToCut: [c.layer], allowSelfIntersection: false });
  }

  cut(e) {
    const c = this.current;
    if (!c || e.originalLayer !== c.layer) return;
    c.layer = e.layer;
    c.layer.setStyle(fenceStyle($("f-kind").value));
    if (c.id) this.farm.fences.get(c.id).layer = c.layer;
  }

  close() {
    this.map.pm.disableDraw();
    this.clearCorners();
    this.map.doubleClickZoom.enable();
    this.map.pm.disableGlobalCutMode?.();
    this.clearError();
    this.clearTheirs();
    const c = this.current;
    this.current = null;
    if (c && c.layer) {
      c.layer.pm.disable();
      c.layer.getElement()?.classList.remove("selected");
      if (c.id === null) c.layer.remove();
      else {
        // back to the stored shape
        const f = this.farm.fences.get(c.id);
        if (f) {
          f.layer.remove();
          f.layer = fenceLayer(f.feature).addTo(this.map);
          f.layer.on("click", () => this.open(c.id));
        }
      }
    }
    $("fence-form").hidden = true;
    $("fence-grazing").hidden = true;
    $("edit-hint").hidden = false;
    $("draw-hint").hidden = true;
  }

  // ---- saving ----

  body(props) {
    const c = this.current;
    const geometry = c.layer.toGeoJSON(7).geometry;
    const body = { type: "Feature", geometry, properties: props };
    const id = $("f-id").value.trim();
    if (!c.id && id) body.id = id;
    return body;
  }

  // One save at a time: on a slow connection a second tap on Save would write the fence twice.
  async save(force = null) {
    const c = this.current;
    if (!c || !c.layer || this.saving) return;
    this.saving = true;
    $("save").disabled = true;
    try {
      await this.write(c, force);
    } finally {
      this.saving = false;
      $("save").disabled = !(this.current && this.current.layer);
    }
  }

  async write(c, force) {
    this.clearError();
    let props;
    try {
      props = this.props();
    } catch (e) {
      $("form-error").textContent = e.message;
      return;
    }
    const body = this.body(props);
    try {
      const { data } = c.id
        ? await this.farm.api.request("PUT", `/fences/${encodeURIComponent(c.id)}`, { body, ifMatch: force || c.etag })
        : await this.farm.api.request("POST", "/fences", { body });
      try {
        await saveMobs(this.farm.api, data.id);
      } catch (e) {
        await this.saved(data);
        $("edit-hint").textContent += ` Its mobs were not changed: ${e.message}`;
        return;
      }
      await this.saved(data);
    } catch (e) {
      if (e instanceof ApiError && e.status === 412) return this.conflict(body);
      this.showError(e);
    }
  }

  async saved(feature) {
    const c = this.current;
    if (c && c.layer) {
      c.layer.pm.disable();
      c.layer.remove();
    }
    const old = this.farm.fences.get(feature.id);
    if (old) old.layer.remove();
    this.current = null;
    const layer = fenceLayer(feature).addTo(this.map);
    layer.on("click", () => this.open(feature.id));
    this.farm.fences.set(feature.id, { feature, etag: `"${feature.properties.version}"`, layer });
    this.close();
    $("edit-hint").textContent = `Saved ${feature.properties.name || feature.id} (version ${feature.properties.version}).`;
    await this.refresh();
  }

  async remove() {
    const c = this.current;
    if (!c || !c.id) return;
    const f = this.farm.fences.get(c.id);
    if (!window.confirm(`Delete the fence ${f.feature.properties.name || c.id}?`)) return;
    try {
      await this.farm.api.request("DELETE", `/fences/${encodeURIComponent(c.id)}`, { ifMatch: c.etag });
      this.current = null;
      f.layer.remove();
      this.farm.fences.delete(c.id);
      this.close();
      $("edit-hint").textContent = `Deleted ${f.feature.properties.name || c.id}.`;
      await this.refresh();
    } catch (e) {
      if (e instanceof ApiError && e.status === 412) {
        let data, etag;
        try {
          ({ data, etag } = await this.farm.api.get(`/fences/${encodeURIComponent(c.id)}`));
        } catch (e2) {
          if (!(e2 instanceof ApiError && e2.status === 404)) return this.showError(e2);
          this.current = null; // gone already: as the farmer wanted
          f.layer.remove();
          this.farm.fences.delete(c.id);
          this.close();
          $("edit-hint").textContent = `${f.feature.properties.name || c.id} was deleted by someone else already.`;
          return;
        }
        $("form-error").textContent = "Someone else changed this fence meanwhile: look again before deleting.";
        f.feature = data;
        c.etag = f.etag = etag;
        this.fill(data.properties, c.id);
        return;
      }
      this.showError(e);
    }
  }

  // The API's problem next to the shape and in the form.
  showError(e) {
    const detail = e.problem && e.problem.detail ? e.problem.detail : e.message;
    $("form-error").textContent = detail;
    const c = this.current;
    if (c && c.layer && c.layer.getBounds) {
      this.errorTip = L.tooltip({ permanent: true, direction: "top", className: "shape-error" })
        .setLatLng(c.layer.getBounds().getCenter())
        .setContent(escapeHtml(detail))
        .addTo(this.map);
    }
  }

  clearError() {
    $("form-error").textContent = "";
    if (this.errorTip) this.errorTip.remove();
    this.errorTip = null;
  }

  // ---- 412: both versions, the farmer chooses ----

  async conflict(mine) {
    const c = this.current;
    let theirs, etag;
    try {
      ({ data: theirs, etag } = await this.farm.api.get(`/fences/${encodeURIComponent(c.id)}`));
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) return this.deletedMeanwhile();
      return this.showError(e);
    }
    this.pending = { mine, theirs, etag };
    this.clearTheirs();
    this.theirs = L.geoJSON(theirs, { style: { className: "fence theirs", dashArray: "4 4", weight: 3 } }).addTo(this.map);
    const rows = [
      ["Name", mine.properties.name, theirs.properties.name],
      ["Kind", mine.properties.kind, theirs.properties.kind],
      ["Tags", mine.properties.tags.join(", "), (theirs.properties.tags || []).join(", ")],
      ["Dwell (s)", mine.properties.dwell_s ?? "", theirs.properties.dwell_s ?? ""],
      ["Exit buffer (m)", mine.properties.exit_buffer_m ?? "", theirs.properties.exit_buffer_m ?? ""],
      ["Corners", corners(mine.geometry), corners(theirs.geometry)],
      ["Version", c.etag.replaceAll('"', ""), theirs.properties.version],
    ];
    $("conflict-rows").innerHTML = rows
      .map(([k, a, b]) => `<tr${String(a) !== String(b) ? ' class="differs"' : ""}><th>${k}</th><td>${escapeHtml(a)}</td><td>${escapeHtml(b)}</td></tr>`)
      .join("");
    $("conflict").showModal();
  }

  async resolve(keepMine) {
    $("conflict").close();
    const p = this.pending;
    this.pending = null;
    this.clearTheirs();
    if (!p) return;
    if (keepMine) {
      this.current.etag = p.etag;
      await this.save(p.etag);
    } else {
      await this.saved(p.theirs);
    }
  }

  clearTheirs() {
    if (this.theirs) this.theirs.remove();
    this.theirs = null;
  }

  // ---- import: all or none, the per-feature errors on the map ----

  async importFile(file) {
    if (!file) return;
    const box = $("import-result");
    box.hidden = false;
    box.className = "notice";
    if (this.importLayer) this.importLayer.remove();
    let collection;
    try {
      const text = await file.text();
      if (/\.kml$/i.test(file.name) || text.trimStart().startsWith("<")) {
        collection = kml(new DOMParser().parseFromString(text, "text/xml"));
      } else {
        collection = JSON.parse(text);
        if (collection.type === "Feature") collection = { type: "FeatureCollection", features: [collection] };
      }
    } catch (e) {
      box.textContent = `${file.name} does not read as GeoJSON or KML: ${e.message}`;
      box.classList.add("error");
      return;
    }
    const local = [];
    const features = (collection.features || []).map((f, i) => {
      const t = f.geometry && f.geometry.type;
      if (t !== "Polygon" && t !== "MultiPolygon") local.push({ feature: i, message: `a ${t || "missing"} geometry: only polygons are fences` });
      const props = {};
      for (const k of PROPS) if (f.properties && f.properties[k] != null) props[k] = f.properties[k];
      const out = { type: "Feature", geometry: f.geometry, properties: props };
      if (typeof f.id === "string" && /^[A-Za-z0-9_.:-]+$/.test(f.id)) out.id = f.id;
      return out;
    });
    $("import-file").value = "";
    if (!features.length) {
      box.textContent = `${file.name} holds no features.`;
      return;
    }
    if (local.length) return this.importErrors(file.name, collection, local);
    try {
      const { data } = await this.farm.api.request("POST", "/fences/import", { body: { type: "FeatureCollection", features } });
      box.textContent = `Imported ${data.features.length} fences from ${file.name}.`;
      await this.refresh(true);
    } catch (e) {
      if (e instanceof ApiError && Array.isArray(e.problem.errors)) {
        const errors = e.problem.errors.map((x) => ({
          feature: typeof x.feature === "number" ? x.feature : Number(x.location?.[2] ?? -1),
          message: x.message,
        }));
        return this.importErrors(file.name, collection, errors, e.problem.detail);
      }
      box.textContent = e.message;
      box.classList.add("error");
    }
  }

  importErrors(name, collection, errors, detail) {
    const box = $("import-result");
    const byFeature = new Map(errors.map((x) => [x.feature, x.message]));
    box.classList.add("error");
    box.innerHTML = `<p>${escapeHtml(detail || `${errors.length} features of ${name} are invalid; nothing was imported`)}</p><ul>${errors
      .map((x) => `<li>feature ${x.feature + 1}: ${escapeHtml(x.message)}</li>`)
      .join("")}</ul>`;
    // one feature at a time: a shape the map cannot draw (a careless or hostile file) is left out, its
    // error stays in the list, and the others are drawn
    this.importLayer = L.featureGroup().addTo(this.map);
    collection.features.forEach((f, i) => {
      let layer;
      try {
        layer = L.geoJSON(f, { style: { className: byFeature.has(i) ? "import-bad" : "import-ok", weight: 2 } });
      } catch {
        return;
      }
      const msg = byFeature.get(i);
      if (msg) layer.eachLayer((l) => l.bindTooltip(escapeHtml(msg), { permanent: true, className: "shape-error" }));
      layer.addTo(this.importLayer);
    });
    if (this.importLayer.getBounds().isValid()) this.map.fitBounds(this.importLayer.getBounds(), { maxZoom: 17 });
  }
}

function corners(geometry) {
  const rings = geometry.type === "Polygon" ? [geometry.coordinates] : geometry.coordinates;
  return rings.reduce((n, poly) => n + poly.reduce((m, ring) => m + ring.length - 1, 0), 0);
}
