// The operator's page (signed in with the admin key): create farms and issue their keys.
import { ApiError } from "./api.js";

const $ = (id) => document.getElementById(id);

export function startAdmin(api, signOut) {
  const result = $("admin-result");
  const show = (text) => {
    result.textContent = text;
  };
  $("admin-signout").addEventListener("click", signOut);
  $("farm-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const id = $("farm-id").value.trim();
    try {
      const { data } = await api.request("POST", "/admin/tenants", { body: { id, name: $("farm-name").value.trim() } });
      show(`Farm ${data.tenant} created. Its API key (shown once, keep it safe): ${data.api_key}`);
    } catch (e) {
      show(e instanceof ApiError ? e.message : String(e));
    }
  });
  $("key-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const farm = $("key-farm").value.trim();
    try {
      const { data } = await api.request("POST", `/admin/tenants/${encodeURIComponent(farm)}/keys`);
      show(`A new key for ${data.tenant} (shown once): ${data.api_key}`);
    } catch (e) {
      show(e instanceof ApiError ? e.message : String(e));
    }
  });
}
