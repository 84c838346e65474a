// The form's schedule: always, a daily window, one absolute window, or the API's JSON for anything else.
const $ = (id) => document.getElementById(id);
const here = () => Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";

export function showWhen() {
  const when = $("f-when").value;
  $("when-daily").hidden = when !== "daily";
  $("when-dates").hidden = when !== "dates";
  $("when-zone").hidden = when !== "daily" && when !== "dates";
  $("when-json").hidden = when !== "json";
}

// datetime-local's value (the browser's own zone) <-> an RFC 3339 instant
function localInput(instant) {
  const d = new Date(instant);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export function fillSchedule(schedule) {
  $("f-zone").value = (schedule && schedule.timezone) || here();
  $("f-schedule").value = schedule ? JSON.stringify(schedule) : "";
  $("f-start").value = "06:00";
  $("f-end").value = "18:00";
  $("f-from").value = $("f-to").value = "";
  const only = schedule && schedule.windows.length === 1 ? schedule.windows[0] : null;
  if (!schedule) $("f-when").value = "always";
  else if (only && only.kind === "daily" && !only.days && !only.valid_from && !only.valid_to) {
    $("f-when").value = "daily";
    $("f-start").value = only.start.slice(0, 5);
    $("f-end").value = only.end.slice(0, 5);
  } else if (only && only.kind === "absolute") {
    $("f-when").value = "dates";
    $("f-from").value = localInput(only.from);
    $("f-to").value = localInput(only.to);
  } else $("f-when").value = "json";
  showWhen();
}

// The schedule the form says (null: always), or an Error saying what is missing.
export function readSchedule() {
  const when = $("f-when").value;
  const timezone = $("f-zone").value.trim() || here();
  if (when === "always") return null;
  if (when === "daily") {
    if (!$("f-start").value || !$("f-end").value) throw new Error("Give the times the fence opens and closes.");
    return { timezone, windows: [{ kind: "daily", start: $("f-start").value, end: $("f-end").value }] };
  }
  if (when === "dates") {
    if (!$("f-from").value || !$("f-to").value) throw new Error("Give the date and time the fence opens and closes.");
    const from = new Date($("f-from").value).toISOString();
    const to = new Date($("f-to").value).toISOString();
    return { timezone, windows: [{ kind: "absolute", from, to }] };
  }
  const text = $("f-schedule").value.trim();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    throw new Error("The schedule is not valid JSON.");
  }
}
