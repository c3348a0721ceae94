// The session logic of the built client over in-memory sockets and a scripted SSE body, no
// server: what it sends, what it drops, how long it waits, when it stops, how SSE is parsed.
// `node --test test/` (run by `npm test`, and by tests/tests/js_client.rs). The end-to-end
// behaviour against the real binary is tests/tests/js_client.rs.
import assert from "node:assert/strict";
import { afterEach, mock, test } from "node:test";
import * as H from "../dist/herald.mjs";

/** A JWT-shaped token with these claims (unsigned: the client only reads them). */
const jwt = (claims) => "h." + Buffer.from(JSON.stringify(claims)).toString("base64url") + ".s";

/** A socket factory whose sockets the test drives. */
function sockets() {
  const made = [];
  const factory = (url) => {
    const s = {
      url,
      sent: [],
      send(d) {
        this.sent.push(JSON.parse(d));
      },
      close(code) {
        this.closedWith = code ?? 1000;
      },
      open() {
        this.onopen();
      },
      rx(f) {
        this.onmessage({ data: JSON.stringify(f) });
      },
      end(code, reason = "") {
        this.onclose({ code, reason });
      },
    };
    made.push(s);
    return s;
  };
  return { made, factory };
}

const welcome = (groups = [], extra = {}) => ({
  type: "welcome",
  connection: "edge-1-1",
  user: "alice",
  groups,
  ping_interval: 25,
  expires: Math.floor(Date.now() / 1000) + 3600,
  ...extra,
});

/** Clients of the running test, closed after it (a failed assertion leaves no timer running). */
const clients = [];
afterEach(() => {
  for (const c of clients.splice(0)) c.close();
  mock.timers.reset();
});

/** A client over `sockets()`, with every event recorded. */
function client(options = {}) {
  const { made, factory } = sockets();
  const c = new H.HeraldClient({ url: "ws://h/ws/p", token: jwt({ groups: ["news"] }), socket: factory, sse: false, ...options });
  clients.push(c);
  const ev = [];
  for (const e of ["open", "message", "resumed", "error", "close", "acked"]) c.on(e, (x) => ev.push([e, x]));
  return { c, made, ev, of: (name) => ev.filter(([e]) => e === name).map(([, x]) => x) };
}

const tick = () => new Promise((r) => setImmediate(r));

test("auth names the token, the device and what to resume; other groups are joined with since", async () => {
  const { c, made } = client({
    device: "phone-1",
    groups: ["chat/a"],
    positions: {
      "group:news": { offset: 4, epoch: 9 },
      "group:chat/a": { offset: 2, epoch: 7 },
      user: { offset: 3, epoch: 8 },
      broadcast: { offset: 1, epoch: 6 },
    },
  });
  c.connect();
  await tick();
  made[0].open();
  const auth = made[0].sent[0];
  assert.equal(auth.type, "auth");
  assert.equal(auth.device, "phone-1");
  assert.deepEqual(
    auth.resume.sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b))),
    [
      { broadcast: true, offset: 1, epoch: 6 },
      { group: "news", offset: 4, epoch: 9 },
      { user: true, offset: 3, epoch: 8 },
    ],
    "chat/a is not a token group: not in auth",
  );
  made[0].rx(welcome(["news"]));
  assert.deepEqual(made[0].sent[1], { type: "subscribe", group: "chat/a", since: { offset: 2, epoch: 7 }, id: 1 });
  c.close();
});

test("messages at or below the last offset of the same epoch are dropped; a new epoch is taken", async () => {
  const { c, made, of } = client({ events: [] });
  c.connect();
  await tick();
  made[0].open();
  made[0].rx(welcome());
  const msg = (offset, epoch) => ({ type: "msg", kind: "broadcast", data: offset, offset, epoch });
  for (const m of [msg(1, 5), msg(2, 5), msg(2, 5), msg(1, 5), msg(3, 5), msg(1, 6)]) made[0].rx(m);
  assert.deepEqual(
    of("message").map((m) => [m.offset, m.epoch]),
    [
      [1, 5],
      [2, 5],
      [3, 5],
      [1, 6],
    ],
  );
  made[0].rx({ type: "resumed", id: 0, broadcast: true, epoch: 6, offset: 9, recovered: false });
  assert.deepEqual(of("resumed")[0], { stream: "broadcast", epoch: 6, offset: 9, recovered: false });
  made[0].rx(msg(9, 6));
  assert.equal(of("message").length, 4, "9 was replayed already");
  assert.deepEqual(c.positions(), { broadcast: { offset: 9, epoch: 6 } });
  c.close();
});

test("typed events and base64 payloads", async () => {
  const { c, made } = client();
  const got = [];
  c.onEvent("race.start", (data, m) => got.push([data, m.group]));
  c.connect();
  await tick();
  made[0].open();
  made[0].rx(welcome());
  made[0].rx({ type: "msg", kind: "group", group: "f1", event: "race.start", data: { lap: 1 } });
  made[0].rx({ type: "msg", kind: "group", group: "f1", event: "other", data: 0 });
  assert.deepEqual(got, [[{ lap: 1 }, "f1"]]);
  assert.deepEqual([...H.decodeBase64("/wAB")], [255, 0, 1]);
  assert.deepEqual([...H.decodeBase64("_-8")], [255, 239], "URL alphabet, no padding");
  c.close();
});

test("backoff doubles with jitter up to its bound; a disconnect hint wins; final codes stop", async () => {
  mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  try {
    const { c, made, of } = client({ backoff: { min: 100, max: 1000 } });
    c.connect();
    await tick();
    for (let i = 0; i < 6; i++) {
      made[i].end(1006);
      mock.timers.tick(of("close")[i].reconnectIn);
      await tick();
    }
    const delays = of("close").map((e) => e.reconnectIn);
    const bounds = [100, 200, 400, 800, 1000, 1000];
    delays.forEach((d, i) => assert.ok(d >= bounds[i] / 2 && d <= bounds[i], `attempt ${i}: ${d} not in [${bounds[i] / 2}, ${bounds[i]}]`));

    made[6].open();
    made[6].rx(welcome());
    made[6].rx({ type: "disconnect", code: 1001, reason: "server shutting down", reconnect_after_ms: 3856 });
    made[6].end(1001, "server shutting down");
    assert.deepEqual(of("close")[6], { code: 1001, name: "GoingAway", reason: "server shutting down", reconnectIn: 3856 });
    mock.timers.tick(3855);
    await tick();
    assert.equal(made.length, 7, "not before the hint");
    mock.timers.tick(1);
    await tick();
    assert.equal(made.length, 8);

    made[7].end(4004, "unknown project");
    assert.equal(of("close")[7].reconnectIn, undefined);
    assert.equal(c.state, "closed");
  } finally {
    mock.timers.reset();
  }
});

test("a refused token stops a client with a fixed token, and is replaced by a token function", async () => {
  const fixed = client({ token: "t" });
  fixed.c.connect();
  await tick();
  fixed.made[0].end(4002, "invalid token");
  assert.deepEqual(fixed.of("close")[0], { code: 4002, name: "InvalidToken", reason: "invalid token", reconnectIn: undefined });

  mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  try {
    const asked = [];
    const fresh = client({ token: (req) => (asked.push(req), jwt({ n: asked.length })) });
    fresh.c.connect();
    await tick();
    fresh.made[0].end(4005, "token expired");
    mock.timers.tick(fresh.of("close")[0].reconnectIn);
    await tick();
    assert.deepEqual(asked, [{ reason: "connect" }, { reason: "rejected", code: 4005 }]);
    fresh.made[1].open();
    assert.equal(fresh.made[1].sent[0].token, jwt({ n: 2 }));
    fresh.c.close();
  } finally {
    mock.timers.reset();
  }
});

test("the token is refreshed before it expires, and a refused refresh is not kept", async () => {
  mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  try {
    const asked = [];
    const { c, made } = client({ refreshBeforeSecs: 60, token: (req) => (asked.push(req.reason), jwt({ exp: Math.floor(Date.now() / 1000) + 3600 })) });
    c.connect();
    await tick();
    made[0].open();
    made[0].rx(welcome([], { expires: Math.floor(Date.now() / 1000) + 90 }));
    mock.timers.tick(29_000);
    await tick();
    assert.deepEqual(asked, ["connect"]);
    mock.timers.tick(1_500);
    await tick();
    await tick();
    assert.deepEqual(asked, ["connect", "refresh"]);
    const refresh = made[0].sent.at(-1);
    assert.equal(refresh.type, "refresh");
    made[0].rx({ type: "error", id: refresh.id, code: 4402, message: "token expired" });
    await tick();
    made[0].end(1006);
    mock.timers.runAll();
    await tick();
    assert.deepEqual(asked, ["connect", "refresh", "connect"], "the refused token is not reused");
    c.close();
  } finally {
    mock.timers.reset();
  }
});

test("an unanswered ping means a dead connection", async () => {
  mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  try {
    const { c, made, of } = client();
    c.connect();
    await tick();
    made[0].open();
    made[0].rx(welcome([], { ping_interval: 5 }));
    mock.timers.tick(5000);
    assert.equal(made[0].sent.at(-1).type, "ping");
    made[0].rx({ type: "pong", id: 0 });
    mock.timers.tick(5000);
    assert.equal(of("close").length, 0, "answered: still up");
    mock.timers.tick(5000);
    assert.equal(of("close")[0].code, 4006);
    c.close();
  } finally {
    mock.timers.reset();
  }
});

test("the user stream is acknowledged, cumulatively, when a device is named", async () => {
  mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  try {
    const { c, made, of } = client({ device: "d", ackIntervalMs: 500 });
    c.connect();
    await tick();
    made[0].open();
    made[0].rx(welcome());
    for (const o of [1, 2, 3]) made[0].rx({ type: "msg", kind: "user", user: "alice", data: o, offset: o, epoch: 4 });
    mock.timers.tick(500);
    const ack = made[0].sent.at(-1);
    assert.deepEqual({ ...ack, id: 0 }, { type: "ack", stream: "user", offset: 3, epoch: 4, id: 0 });
    assert.equal(made[0].sent.filter((f) => f.type === "ack").length, 1);
    made[0].rx({ type: "ack", id: ack.id });
    await tick();
    assert.deepEqual(of("acked"), [{ offset: 3, epoch: 4 }]);
    c.close();
  } finally {
    mock.timers.reset();
  }
});

test("wxSocket speaks SocketTask: send({data}), onMessage({data}), onClose({code, reason})", async () => {
  const task = { sent: [] };
  const wx = {
    connectSocket(o) {
      task.options = o;
      return {
        send: (x) => task.sent.push(x),
        close: (x) => (task.closed = x),
        onOpen: (f) => (task.open = f),
        onMessage: (f) => (task.message = f),
        onClose: (f) => (task.close = f),
        onError: (f) => (task.error = f),
      };
    },
  };
  const { c, of } = client({ socket: H.wxSocket(wx) });
  c.connect();
  await tick();
  assert.deepEqual(task.options, { url: "ws://h/ws/p" }, "no sub-protocol offered");
  task.open({});
  assert.equal(JSON.parse(task.sent[0].data).type, "auth");
  task.message({ data: JSON.stringify(welcome()) });
  assert.equal(c.state, "open");
  task.close({ code: 4009, reason: "disconnected by operator" });
  assert.equal(of("close")[0].name, "DisconnectedByOperator");
  c.close();
});

/** A `fetch` answering with `chunks` as an event stream (or with `status` and `body`). */
function fakeFetch(answers) {
  const calls = [];
  const f = async (url) => {
    calls.push(url);
    const a = answers.shift();
    if (a.status) return new Response(a.body, { status: a.status, headers: a.headers });
    const enc = new TextEncoder();
    const body = new ReadableStream({
      start(ctl) {
        for (const ch of a.chunks) ctl.enqueue(enc.encode(ch));
        if (a.end) ctl.close();
      },
    });
    return new Response(body, { status: 200, headers: { "content-type": "text/event-stream" } });
  };
  return { f, calls };
}

test("WebSocket failing before it opens falls back to SSE; events parse across chunks; close events close", async () => {
  mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  try {
    const w = JSON.stringify(welcome(["news"]));
    const m = JSON.stringify({ type: "msg", kind: "group", group: "news", data: { a: 1 }, offset: 1, epoch: 2 });
    const { f, calls } = fakeFetch([
      {
        chunks: [`data: ${w}\r`, `\n\r\n:\n\n`, `id: h1.g:news:2:1\ndata: ${m.slice(0, 20)}`, `${m.slice(20)}\n\n`, "retry: 700\nevent: close\n", 'data: {"code":4009,"reason":"disconnected by operator","reconnect_after_ms":700}\n\n'],
      },
      { chunks: [`data: ${w}\n\n`] },
    ]);
    const { c, made, of } = client({ sse: "http://h/sse/p", fetch: f, backoff: { min: 10 } });
    c.connect();
    await tick();
    made[0].end(1006);
    mock.timers.runAll();
    await tick();
    made[1].end(1006);
    mock.timers.runAll();
    for (let i = 0; i < 10; i++) await tick();
    assert.equal(c.transport, "sse");
    const first = new URL(calls[0]);
    assert.equal(first.pathname, "/sse/p");
    assert.equal(first.searchParams.get("token"), jwt({ groups: ["news"] }));
    assert.equal(of("open").length, 1);
    assert.deepEqual(of("message")[0].data, { a: 1 });
    const close = of("close").at(-1);
    assert.deepEqual([close.code, close.name, close.reconnectIn], [4009, "DisconnectedByOperator", 700]);
    mock.timers.tick(700);
    for (let i = 0; i < 10; i++) await tick();
    assert.equal(new URL(calls[1]).searchParams.get("last_event_id"), "h1.g:news:2:1");
    assert.equal(of("open").length, 2);
    // Over SSE a group the token does not allow is refused here, not by a refused stream.
    await assert.rejects(c.subscribe("sport"), (e) => e.code === 4403);
    await assert.rejects(c.subscribe("user/x"), (e) => e.code === 4422);
    c.close();
  } finally {
    mock.timers.reset();
  }
});

test("a refused SSE request is told by its close code", async () => {
  const { f } = fakeFetch([{ status: 401, body: "token expired\n" }]);
  const { c, of } = client({ transport: "sse", sse: "http://h/sse/p", fetch: f, token: "t" });
  c.connect();
  for (let i = 0; i < 10; i++) await tick();
  assert.deepEqual(of("close")[0], { code: 4005, name: "TokenExpired", reason: "token expired", reconnectIn: undefined });
});

test("close codes carry their names", () => {
  assert.equal(H.closeCodeName(4005), "TokenExpired");
  assert.equal(H.closeCodeName(1006), "Abnormal");
  assert.equal(H.closeCodeName(4999), undefined);
  assert.equal(H.CloseCode.SlowConsumer, 4008);
  assert.equal(H.ErrorCode.HistoryUnavailable, 4503);
});

test("a WebSocket constructor is used with the herald.v1 sub-protocol (Node's ws, or the global one)", async () => {
  const made = [];
  class FakeWebSocket {
    constructor(url, protocols) {
      made.push([url, protocols]);
    }
    send() {}
    close() {}
  }
  const c = new H.HeraldClient({ url: "ws://h/ws/p", token: "t", WebSocket: FakeWebSocket, sse: false });
  clients.push(c);
  c.connect();
  await tick();
  assert.deepEqual(made, [["ws://h/ws/p", "herald.v1"]]);
});
