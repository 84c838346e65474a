// The fence form's mobs: which mobs name this fence among their pastures and exclusion zones.
// A mob that names no fence has every pasture of the farm: shown ticked and fixed (ticking would
// narrow it to this one fence). Saved after the fence, one PUT /mobs/{id} a mob changed, with If-Match.
import { ApiError } from "./api.js";
import { escapeHtml } from "./farmmap.js";

const $ = (id) => document.getElementById(id);

export async function fillMobs(api, fenceId) {
  const box = $("f-mobs");
  let mobs = [];
  try {
    mobs = await api.all("/mobs", "mobs");
  } catch {
    /* no mob list: the fieldset stays hidden */
  }
  box.hidden = mobs.length === 0;
  $("f-mob-list").innerHTML = mobs
    .map((m) => {
      const all = m.fences.length === 0;
      const on = all || (fenceId !== null && m.fences.includes(fenceId));
      const label = `${escapeHtml(m.name || m.id)}${all ? " (names no fence: every pasture)" : ""}`;
      return `<label class="check"><input type="checkbox" data-mob="${escapeHtml(m.id)}"${on ? " checked" : ""}${all ? " disabled" : ""}
        data-was="${on}"> ${label}</label>`;
    })
    .join("");
}

// After the fence is saved: the mobs whose box changed get the fence added or removed.
export async function saveMobs(api, fenceId) {
  const changed = [...document.querySelectorAll("#f-mob-list input:not(:disabled)")].filter(
    (box) => String(box.checked) !== box.dataset.was,
  );
  for (const box of changed) {
    const id = box.dataset.mob;
    for (let attempt = 0; ; attempt++) {
      const { data: mob, etag } = await api.get(`/mobs/${encodeURIComponent(id)}`);
      const fences = mob.fences.filter((f) => f !== fenceId);
      if (box.checked) fences.push(fenceId);
      try {
        await api.request("PUT", `/mobs/${encodeURIComponent(id)}`, {
          body: { name: mob.name, fences, devices: mob.devices },
          ifMatch: etag,
        });
        box.dataset.was = String(box.checked);
        break;
      } catch (e) {
        if (!(e instanceof ApiError) || e.status !== 412 || attempt >= 2) throw e; // changed meanwhile: again
      }
    }
  }
}
