// The dashboard's only way to the service: the public API, with the tenant's key as a bearer
// header (never in a URL). The key lives in sessionStorage: it ends with the browser session.

const KEY = "tunedock.apiKey";

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  set(key) { sessionStorage.setItem(KEY, key); },
  clear() { sessionStorage.removeItem(KEY); },
};

export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || (typeof body === "string" && body) || `the service answered ${status}`);
    this.status = status;
    this.code = err.code || (status === 0 ? "unreachable" : "error");
    this.param = err.param || null;
    this.line = err.line || null;
  }
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${session.key || ""}`, ...extra };
}

async function send(method, path, init) {
  try {
    return await fetch(path, { method, ...init });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, { error: { message: "the service could not be reached; check that it is running and reload the page" } });
  }
}

async function body(r) {
  const text = await r.text();
  try { return text ? JSON.parse(text) : null; } catch { return text; }
}

// JSON in, JSON out; a non-2xx answer throws ApiError with the service's code and message.
export async function api(method, path, payload) {
  const init = { headers: headers() };
  if (payload instanceof FormData) init.body = payload;
  else if (payload !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(payload);
  }
  const r = await send(method, path, init);
  const data = await body(r);
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

// Server-sent events read with fetch (EventSource cannot send an Authorization header):
// yields each event's data string until the stream ends or `signal` aborts.
export async function* sse(path, { method = "GET", payload, signal } = {}) {
  const init = { headers: headers({ Accept: "text/event-stream" }), signal };
  if (payload !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(payload);
  }
  const r = await send(method, path, init);
  if (!r.ok) throw new ApiError(r.status, await body(r));
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf = (buf + value).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (data) yield data;
    }
  }
}

// One chat answer streamed through the tenant-checked /v1 gateway; onText gets each piece.
export async function streamChat(model, prompt, onText, signal) {
  const payload = { model, stream: true, temperature: 0, max_tokens: 64,
                    messages: [{ role: "user", content: prompt }] };
  for await (const data of sse("/v1/chat/completions", { method: "POST", payload, signal })) {
    if (data === "[DONE]") return;
    const chunk = JSON.parse(data);
    if (chunk.error) throw new ApiError(502, chunk);
    const piece = chunk.choices && chunk.choices[0] && chunk.choices[0].delta && chunk.choices[0].delta.content;
    if (piece) onText(piece);
  }
}
