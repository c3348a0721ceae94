/**
 * The SSE transport (protocol.md, Server-Sent Events): one `GET /sse/{project}` whose events
 * carry the same JSON frames as the WebSocket, read with `fetch`. Receive only: the groups and
 * the token are fixed per request, and the position travels in the event ids (`last_event_id`).
 */

/** The SSE endpoint of a WebSocket endpoint: `wss://h/ws/p` → `https://h/sse/p`. */
export function sseUrl(ws: string): string {
  return ws.replace(/^ws/, "http").replace(/\/ws\/([^/?]+)/, "/sse/$1");
}

/** Close codes for the HTTP answer to a refused SSE request: its body is the close reason. */
function refusal(status: number, reason: string): number {
  if (status === 401) return reason === "token expired" ? 4005 : reason === "invalid token" ? 4002 : 4001;
  if (status === 403 && reason === "forbidden") return 4003;
  return status === 404 && reason === "unknown project" ? 4004 : 1006;
}

/** Opens the stream. `frame` gets each event's frame and its id; `close` the end, once: the
 * server's `close` event, the code of a refusal, or 1006. Returns a function that aborts it.
 * The token and the last event id travel in the query: a cross-origin `fetch` with headers of
 * its own would need a preflight the stream does not answer. */
export function openSse(
  url: string,
  token: string,
  groups: string[],
  lastEventId: string | undefined,
  fetchFn: typeof fetch,
  frame: (f: Record<string, any>, id?: string) => void,
  close: (code: number, reason: string) => void,
): () => void {
  const ac = new AbortController();
  const q = new URLSearchParams({ token });
  if (groups.length) q.set("groups", groups.join(","));
  if (lastEventId) q.set("last_event_id", lastEventId);
  let done = false;
  const end = (code: number, reason: string) => {
    if (!done) close(code, reason);
    done = true;
  };
  (async () => {
    const r = await fetchFn(url + (url.includes("?") ? "&" : "?") + q, {
      headers: { accept: "text/event-stream" },
      signal: ac.signal,
    });
    if (r.status !== 200) {
      const reason = (await r.text()).trim();
      const wait = Number(r.headers.get("retry-after"));
      // 429 and 503 say when to come back; some jitter so that clients do not come back together.
      if (wait > 0) frame({ type: "disconnect", reconnect_after_ms: wait * 1000 + Math.random() * 1000 });
      return end(refusal(r.status, reason), reason);
    }
    const rd = r.body!.getReader();
    const dec = new TextDecoder();
    let buf = "";
    let data = "";
    let event = "";
    let id: string | undefined;
    for (;;) {
      const { value, done: eof } = await rd.read();
      if (eof) return end(1006, "stream ended");
      buf += dec.decode(value, { stream: true });
      let i: number;
      while ((i = buf.search(/\r\n|\r|\n/)) >= 0) {
        // A CR at the end of what came so far may be the first half of a CRLF.
        if (i === buf.length - 1 && buf[i] === "\r") break;
        const line = buf.slice(0, i);
        buf = buf.slice(i + (buf.startsWith("\r\n", i) ? 2 : 1));
        if (line) {
          const c = line.indexOf(":");
          const field = c < 0 ? line : line.slice(0, c);
          const v = c < 0 ? "" : line.slice(c + (line[c + 1] === " " ? 2 : 1));
          if (field === "data") data += "\n" + v;
          else if (field === "id") id = v;
          else if (field === "event") event = v;
          continue;
        }
        // A comment alone (the server's heartbeat) says the stream is alive: an empty frame.
        const f = data ? JSON.parse(data.slice(1)) : {};
        if (event === "close") {
          if (f.reconnect_after_ms) frame({ type: "disconnect", ...f });
          return end(f.code, f.reason);
        }
        frame(f, id);
        data = event = "";
        id = undefined;
      }
    }
  })().catch((e) => end(1006, String(e)));
  return () => {
    done = true;
    ac.abort();
  };
}
