// The farm's events live: Server-Sent Events read with fetch, so the API key travels in the
// Authorization header (EventSource cannot send headers, and a key in the URL would land in logs).
// After a lost connection it reconnects with Last-Event-ID: the API sends what was missed.
import { fetchEventSource } from "@microsoft/fetch-event-source";

class Retry extends Error {}
class Fatal extends Error {}

export function follow(api, { onEvent, onStatus }) {
  const ctrl = new AbortController();
  let delay = 1000;
  fetchEventSource("/events/stream", {
    headers: api.headers(),
    signal: ctrl.signal,
    openWhenHidden: true, // a phone in a pocket keeps its place; the feed catches up anyway
    async onopen(r) {
      if (r.ok && (r.headers.get("content-type") || "").startsWith("text/event-stream")) {
        delay = 1000;
        onStatus("live");
        return;
      }
      if (r.status === 401 || r.status === 403) throw new Fatal(`the API refused the key (${r.status})`);
      throw new Retry(`the stream answered ${r.status}`);
    },
    onmessage(m) {
      if (!m.data) return;
      try {
        onEvent(JSON.parse(m.data), m.id);
      } catch (e) {
        console.warn("fencex: an event that did not read", e);
      }
    },
    onclose() {
      throw new Retry("the stream ended");
    },
    onerror(err) {
      if (err instanceof Fatal) {
        onStatus("signed out");
        throw err;
      }
      onStatus("reconnecting");
      delay = Math.min(delay * 2, 15000);
      return delay;
    },
  }).catch(() => {});
  return () => ctrl.abort();
}
