/**
 * The SSE transport (docs/protocol.md, Server-Sent Events): one `GET` that streams the same
 * server frames as the WebSocket, read with `fetch` so the token travels in a header and the
 * position in `Last-Event-ID`. Receive only: a new set of groups or a fresh token means a new
 * request.
 */

/** The SSE endpoint of a WebSocket endpoint: `wss://h/ws/p` → `https://h/sse/p`. */
export function sseUrl(ws: string): string {
  return ws.replace(/^ws/, "http").replace(/\/ws\/([^/?]+)/, "/sse/$1");
}

/** Opens the stream; `frame` gets each event's JSON and its id, `close` the end once (a close
 * code: the server's, or one for its HTTP status). Returns a function that aborts it. */
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
  const headers: Record<string, string> = { authorization: "Bearer " + token, accept: "text/event-stream" };
  if (lastEventId) headers["last-event-id"] = lastEventId;
  const q = groups.length ? (url.includes("?") ? "&" : "?") + "groups=" + groups.map(encodeURIComponent).join(",") : "";
  let done = false;
  const end = (code: number, reason: string) => {
    if (!done) close(code, reason);
    done = true;
  };
  (async () => {
    const r = await fetchFn(url + q, { headers, signal: ac.signal });
    if (r.status !== 200) return end(HTTP_CLOSE[r.status] ?? 1006, (await r.text()).trim());
    const rd = r.body!.getReader();
    const dec = new TextDecoder();
    let buf = "";
    let data = "";
    let id: string | undefined;
    for (;;) {
      const { value, done: eof } = await rd.read();
      if (eof) return end(1006, "stream ended");
      buf += dec.decode(value, { stream: true });
      let i: number;
      while ((i = buf.search(/\r\n|\r|\n/)) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + (buf[i] === "\r" && buf[i + 1] === "\n" ? 2 : 1));
        if (!line) {
          if (data) frame(JSON.parse(data.slice(1)), id);
          data = "";
          id = undefined;
          continue;
        }
        const c = line.indexOf(":");
        const field = c < 0 ? line : line.slice(0, c);
        const v = c < 0 ? "" : line.slice(c + (line[c + 1] === " " ? 2 : 1));
        if (field === "data") data += "\n" + v;
        else if (field === "id") id = v;
      }
    }
  })().catch((e) => end(1006, String(e)));
  return () => {
    done = true;
    ac.abort();
  };
}

/** Close codes for the HTTP statuses of a refused SSE request (protocol.md §1.4). */
const HTTP_CLOSE: Record<number, number> = { 401: 4002, 403: 4003, 404: 4004 };
