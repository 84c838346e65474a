// The API over fetch: the key in the Authorization header (never in a URL), problems as errors.

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && problem.detail) || `the API answered ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

export class Api {
  constructor(key) {
    this.key = key;
  }

  headers(extra = {}) {
    return { Authorization: `Bearer ${this.key}`, ...extra };
  }

  async request(method, path, { body, ifMatch } = {}) {
    const headers = this.headers();
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (ifMatch) headers["If-Match"] = ifMatch;
    const r = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
    const type = r.headers.get("content-type") || "";
    const data = r.status === 204 ? null : type.includes("json") ? await r.json() : await r.text();
    if (!r.ok) throw new ApiError(r.status, typeof data === "object" ? data : { detail: String(data) });
    return { data, etag: r.headers.get("etag"), status: r.status, date: r.headers.get("date") };
  }

  get(path) {
    return this.request("GET", path);
  }

  // Every page of a paged list (offset/next_offset).
  async all(path, field, limit = 1000) {
    const out = [];
    let offset = 0;
    for (;;) {
      const sep = path.includes("?") ? "&" : "?";
      const { data } = await this.get(`${path}${sep}limit=${limit}&offset=${offset}`);
      out.push(...data[field]);
      if (data.next_offset == null) return out;
      offset = data.next_offset;
    }
  }
}

// Run fn over items, n at a time.
export async function pool(items, n, fn) {
  const results = [];
  let i = 0;
  const worker = async () => {
    while (i < items.length) {
      const k = i++;
      results[k] = await fn(items[k]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
  return results;
}
