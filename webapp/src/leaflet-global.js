// Leaflet-Geoman extends the global L: set it before Geoman's module runs.
import L from "leaflet";

window.L = L;
export default L;
