// The farm's events live: Server-Sent Events read with fetch, so the API key travels in the
// Authorization header (EventSource cannot send headers, and a key in the URL would land in logs).
// After a lost connection it reconnects with Last-Event-ID: the API sends what was missed.
// A connection that goes silent without an error (a phone in a dead spot, a NAT that forgot it) is
// dropped after stallMs with no byte, keep-alives included (the API sends one every 15 s), and
// replaced the same way.
import { fetchEventSource } from "@microsoft/fetch-event-source";

class Retry extends Error {}
class Fatal extends Error {}

export function follow(api, { onEvent, onStatus, stallMs = 45_000, since = null }) {
  const outer = new AbortController();
  let delay = 1000;
  let lastId = since; // the id of the last event received, over every connection (at first: where to start)

  const connect = () => {
    if (outer.signal.aborted) return;
    const ctrl = new AbortController();
    let timer = null;
    const watch = (ms = stallMs) => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        onStatus("reconnecting");
        ctrl.abort(); // silent too long: a new connection, from lastId
      }, ms);
    };
    const stop = () => ctrl.abort();
    outer.signal.addEventListener("abort", stop, { once: true });
    const headers = api.headers();
    if (lastId) headers["last-event-id"] = lastId; // lower case: the library's own key, one header
    watch(); // the connection's opening may hang as well
    fetchEventSource("/events/stream", {
      headers,
      signal: ctrl.signal,
      openWhenHidden: true, // a phone in a pocket keeps its place; the feed catches up anyway
      async onopen(r) {
        watch();
        if (r.ok && (r.headers.get("content-type") || "").startsWith("text/event-stream")) {
          delay = 1000;
          onStatus("live");
          return;
        }
        if (r.status === 401 || r.status === 403) throw new Fatal(`the API refused the key (${r.status})`);
        throw new Retry(`the stream answered ${r.status}`);
      },
      onmessage(m) {
        watch(); // a keep-alive comes here too, with no data
        if (m.id) lastId = m.id;
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
        watch(delay + stallMs); // the library waits delay, then connects again
        return delay;
      },
    })
      .catch(() => {})
      .finally(() => {
        clearTimeout(timer);
        outer.signal.removeEventListener("abort", stop);
        if (ctrl.signal.aborted) connect(); // dropped for its silence (a sign-out aborted outer too: no-op)
      });
  };
  connect();
  return () => outer.abort();
}
