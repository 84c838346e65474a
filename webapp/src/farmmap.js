// The map: a configurable background (or none), the farm's fences by kind, its animals by state.
import L from "./leaflet-global.js";

export const STATES = {
  in: "in a pasture",
  out: "out (escaped)",
  silent: "silent collar",
  low: "low battery",
  unknown: "no state yet",
};

export function stateOf(d) {
  if (d.out) return "out";
  if (d.silent) return "silent";
  if (d.battery_low || d.low) return "low";
  if (d.out === false) return "in";
  return "unknown";
}

export function createMap(element, config) {
  const map = L.map(element, { zoomControl: true, keyboard: true }).setView([20, 0], 2);
  const tiles = (config && config.tiles) || {};
  if (tiles.url) {
    L.tileLayer(tiles.url, { attribution: tiles.attribution || "", maxZoom: tiles.max_zoom || 19 }).addTo(map);
  } else {
    element.classList.add("plain");
  }
  map.createPane("animals").style.zIndex = 660; // above the fences' names: a label never hides an animal
  L.control.scale({ imperial: false, position: "bottomleft" }).addTo(map);
  map.attributionControl.setPrefix(false); // the tiles' attribution stays; the library's flag makes room on a phone
  const legend = L.control({ position: "topright" });
  legend.onAdd = () => {
    const div = L.DomUtil.create("div", "legend");
    div.innerHTML = Object.entries(STATES)
      .filter(([k]) => k !== "unknown")
      .map(([k, text]) => `<span><i class="dot animal-${k}"></i>${text}</span>`)
      .join("");
    return div;
  };
  legend.addTo(map);
  return map;
}

export function fenceStyle(kind) {
  return {
    className: `fence fence-${kind}`,
    weight: 3,
    dashArray: kind === "exclusion" ? "8 5" : kind === "zone" ? "2 6" : null,
  };
}

export function fenceLayer(feature) {
  const layer = L.GeoJSON.geometryToLayer(feature);
  layer.setStyle(fenceStyle(feature.properties.kind || "pasture"));
  const name = feature.properties.name || feature.id;
  layer.bindTooltip(escapeHtml(name), { permanent: true, direction: "center", className: "fence-label" });
  return layer;
}

export function animalMarker(d) {
  const state = stateOf(d);
  const marker = L.circleMarker([d.lat, d.lon], {
    radius: 8,
    weight: 2,
    className: `animal animal-${state}`,
    pane: "animals",
    bubblingMouseEvents: false,
  });
  marker.bindTooltip(`${escapeHtml(d.device_id)}: ${STATES[state]}`);
  return marker;
}

export function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// A fence's name only where it fits: at a zoom where the fence is narrower than its label, the
// labels of neighbouring paddocks would pile up over each other and over the animals.
export function fitLabels(map, layers) {
  for (const layer of layers) {
    const el = layer.getTooltip() && layer.getTooltip().getElement();
    if (!el || !layer.getBounds) continue;
    const b = layer.getBounds();
    const width = map.latLngToContainerPoint(b.getNorthEast()).x - map.latLngToContainerPoint(b.getSouthWest()).x;
    el.classList.toggle("label-hidden", width < el.offsetWidth + 8);
  }
}
