/**
 * The session: authenticate, (re)subscribe, dispatch messages, keep each stream's position and
 * resume from it, refresh the token, reconnect with backoff, fall back to SSE. The bytes travel
 * over a {@link Socket} (WebSocket, `wx.connectSocket`) or an SSE stream (`sse.ts`).
 */

import { jwtClaims } from "./base64";
import { CloseCode, type CloseCodeName, closeCodeName } from "./codes";
import { type Socket, type SocketFactory, type WebSocketConstructor, webSocket } from "./socket";
import { openSse, sseUrl } from "./sse";

/** Why the client asks for a token. */
export interface TokenRequest {
  /** `connect`: a first token, or the cached one is about to expire; `refresh`: the connection
   * needs a fresh one before `expires`; `rejected`: the server closed with `code` (4002, 4003,
   * 4005 token expired, 4010). */
  reason: "connect" | "refresh" | "rejected";
  /** The close code that made the token useless (`rejected` only). */
  code?: number;
}

/** A token, or a function that gives one (called again when the token is about to expire or
 * was refused). */
export type TokenSource = string | ((req: TokenRequest) => string | Promise<string>);

/** Where the client stands in a recoverable stream: the last message it handled. */
export interface Position {
  offset: number;
  epoch: number;
}

/** A message published to this connection (protocol.md §6.5). `T` is the type of `data`. */
export interface Message<T = unknown> {
  kind: "broadcast" | "group" | "user";
  /** The group (kind `group`). */
  group?: string;
  /** The user (kind `user`). */
  user?: string;
  /** The event name, when the publisher set one. */
  event?: string;
  /** The payload, when it was JSON. */
  data?: T;
  /** The payload in base64, when it was not JSON (`decodeBase64` gives the bytes). */
  b64?: string;
  /** The message's offset in its stream (recoverable targets). */
  offset?: number;
  /** The stream's epoch (with `offset`). */
  epoch?: number;
}

/** The server accepted the connection (protocol.md §6.1). */
export interface Welcome {
  connection: string;
  user: string;
  /** Groups joined from the token's `groups` claim. */
  groups: string[];
  /** Seconds of silence after which the server pings. */
  ping_interval: number;
  /** The token's expiry, Unix seconds. */
  expires: number;
}

/** A stream was replayed up to `offset` (protocol.md §6.7): live messages follow. */
export interface Resumed {
  /** `group:<name>`, `user` or `broadcast`. */
  stream: string;
  epoch: number;
  offset: number;
  /** false: some missed messages could not be sent (history lost or past retention): resync. */
  recovered: boolean;
}

/** The connection ended. */
export interface Closed {
  code: number;
  /** The name of `code` in {@link CloseCode}, when it has one. */
  name?: CloseCodeName;
  reason: string;
  /** Milliseconds until the next attempt; absent when the client stopped (see the guide). */
  reconnectIn?: number;
}

/** An `error` frame (protocol.md §10), or a subscription refused. */
export class HeraldError extends Error {
  constructor(
    /** An {@link ErrorCode}. */
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

/** Events of {@link HeraldClient}, with the argument their listeners get. */
export interface ClientEvents {
  /** Connected and authenticated (every time, reconnects included). */
  open: Welcome;
  message: Message;
  resumed: Resumed;
  /** An error frame: the connection goes on. */
  error: HeraldError;
  close: Closed;
  /** The server kept this device's acknowledgement of its user stream up to here (`device`). */
  acked: Position;
}

/** Options of {@link HeraldClient}. */
export interface ClientOptions {
  /** The project's WebSocket endpoint: `wss://push.example.com/ws/{project}`. */
  url: string;
  token: TokenSource;
  /** Groups to join with `subscribe` at every connect (beside the token's `groups`). */
  groups?: string[];
  /** This device's name (protocol.md §11.2): its user stream is acknowledged and resumed. */
  device?: string;
  /** Positions saved from {@link HeraldClient.positions} by an earlier run. */
  positions?: Record<string, Position>;
  /** The WebSocket constructor (default: the global one). */
  WebSocket?: WebSocketConstructor;
  /** Makes sockets, e.g. `wxSocket(wx)`; wins over `WebSocket`. */
  socket?: SocketFactory;
  /** The SSE endpoint (default: derived from `url`), or false for no SSE fallback. */
  sse?: string | false;
  /** `fetch` for SSE (default: the global one). */
  fetch?: typeof fetch;
  /** Start with SSE instead of WebSocket. */
  transport?: "ws" | "sse";
  /** WebSocket attempts that fail before opening, in a row, before falling back to SSE (2). */
  fallbackAfter?: number;
  /** Backoff bounds in ms ({ min: 500, max: 30000 }): the delay doubles per failed attempt,
   * with half of it random. */
  backoff?: { min?: number; max?: number };
  /** Ask for a fresh token this many seconds before it expires (60). */
  refreshBeforeSecs?: number;
  /** Acknowledge the user stream at most this often, in ms (1000; `device` only). */
  ackIntervalMs?: number;
  /** Send `ping` frames every `ping_interval` and reconnect when one goes unanswered (true). */
  heartbeat?: boolean;
  /** Give up on a connection that is not welcomed within this many ms (15000). */
  connectTimeoutMs?: number;
}

type Frame = Record<string, any>;
type Listener<T> = (x: T) => void;

/** Close codes after which reconnecting cannot help. */
const FINAL: number[] = [CloseCode.UnknownProject, CloseCode.SessionTakenOver, CloseCode.PublishNotAllowed];
/** Close codes that condemn the token: reconnect only with a fresh one. */
const BAD_TOKEN: number[] = [
  CloseCode.InvalidToken,
  CloseCode.Forbidden,
  CloseCode.TokenExpired,
  CloseCode.RefreshMismatch,
];

/** Why the server would refuse `group` to a token with these `channels` (protocol.md §2.2, §3):
 * 4422 a name outside the alphabet, 4403 not allowed; 0 when it would not. */
function refused(group: string, channels: string[] = []): number {
  if (!/^[\w@=-]+(\/[\w@=-]+)*$/.test(group) || group.length > 128 || group.startsWith("user/")) return 4422;
  return channels.some((p) => p === group || (p.endsWith("*") && group.startsWith(p.slice(0, -1)))) ? 0 : 4403;
}

/** A connection to one project of a Herald edge that stays up: see docs/client-js.md. */
export class HeraldClient<Events extends Record<string, unknown> = Record<string, unknown>> {
  /** `idle` before {@link connect}, `connecting`, `open` once welcomed, `closed` after
   * {@link close} or a final close code. */
  state: "idle" | "connecting" | "open" | "closed" = "idle";
  /** The transport in use. */
  transport: "ws" | "sse";
  /** The last welcome. */
  welcome?: Welcome;

  private o: ClientOptions;
  private ls: Record<string, Listener<any>[]> = {};
  private subs: Set<string>;
  private pending = new Map<string, [() => void, (e: HeraldError) => void][]>();
  private pos: Record<string, Position>;
  private waits = new Map<number, (f: Frame | null) => void>();
  private id = 1;
  private sock?: Socket;
  private abort?: () => void;
  private token?: string;
  private why?: TokenRequest;
  private wanted = false;
  private attempts = 0;
  private wsFails = 0;
  private hint?: number;
  private since = 0;
  private pingOut = false;
  private unacked?: Position;
  private lastEventId?: string;
  private timers: Record<string, any> = {};

  constructor(options: ClientOptions) {
    this.o = options;
    this.subs = new Set(options.groups);
    this.pos = { ...options.positions };
    this.transport = options.transport ?? "ws";
  }

  /** Listens to an event; returns a function that removes the listener. */
  on<K extends keyof ClientEvents>(event: K, fn: Listener<ClientEvents[K]>): () => void {
    (this.ls[event] ??= []).push(fn);
    return () => {
      this.ls[event] = this.ls[event].filter((f) => f !== fn);
    };
  }

  /** Listens to messages of one event name, typed by the client's `Events` map. */
  onEvent<K extends keyof Events & string>(name: K, fn: (data: Events[K], m: Message<Events[K]>) => void): () => void {
    return this.on("#" + name as any, (m: Message<Events[K]>) => fn(m.data as Events[K], m));
  }

  /** Connects (and keeps reconnecting until {@link close}). */
  connect(): void {
    if (this.wanted) return;
    this.wanted = true;
    this.open();
  }

  /** Closes the connection and stops reconnecting. */
  close(): void {
    this.wanted = false;
    this.stop();
    this.state = "closed";
    this.emit("close", { code: 1000, name: "Normal", reason: "closed by the client" });
  }

  /** Joins a group, now and at every reconnect. Resolves on the server's `ack`, rejects with
   * a {@link HeraldError} when it is refused (4403 `channels`, 4422 name, 4429 too many). Over
   * SSE the stream is reopened with the group. */
  subscribe(group: string): Promise<void> {
    return new Promise((res, rej) => {
      const sse = this.transport === "sse";
      // Over SSE a refused group would refuse the whole stream: judge it here as the server would.
      const code = sse && this.token ? refused(group, jwtClaims(this.token)?.channels) : 0;
      if (code) return rej(new HeraldError(code, "not allowed: " + group));
      this.subs.add(group);
      const list = this.pending.get(group) ?? [];
      list.push([res, rej]);
      this.pending.set(group, list);
      if (sse && this.wanted) this.reopen();
      else if (this.state === "open") this.join(group);
    });
  }

  /** Leaves a group and forgets its position. */
  async unsubscribe(group: string): Promise<void> {
    this.subs.delete(group);
    delete this.pos["group:" + group];
    if (this.state !== "open") return;
    if (this.transport === "sse") return this.reopen();
    const f = await this.request({ type: "unsubscribe", group });
    if (f?.type === "error") throw new HeraldError(f.code, f.message);
  }

  /** Each recoverable stream's position (`group:<name>`, `user`, `broadcast`), to keep across
   * runs and give back as `positions`. */
  positions(): Record<string, Position> {
    return { ...this.pos };
  }

  private emit<K extends string>(event: K, x: unknown): void {
    for (const f of this.ls[event] ?? []) {
      try {
        f(x);
      } catch (e) {
        // A listener's failure is the application's, not the session's: report it apart.
        setTimeout(() => {
          throw e;
        });
      }
    }
  }

  private later(name: string, ms: number, fn: () => void): void {
    clearTimeout(this.timers[name]);
    this.timers[name] = setTimeout(fn, Math.min(ms, 2 ** 31 - 1));
  }

  private async getToken(): Promise<string> {
    const t = this.o.token;
    if (typeof t === "string") return (this.token = t);
    const exp = this.token && jwtClaims(this.token)?.exp;
    if (this.token && !this.why && !(exp && exp * 1000 < Date.now() + this.refreshMs())) return this.token;
    const why = this.why ?? { reason: "connect" };
    this.why = undefined;
    return (this.token = await t(why));
  }

  private refreshMs(): number {
    return (this.o.refreshBeforeSecs ?? 60) * 1000;
  }

  private async open(): Promise<void> {
    this.state = "connecting";
    let token: string;
    try {
      token = await this.getToken();
    } catch (e) {
      this.emit("error", new HeraldError(0, "token: " + e));
      return this.retry(CloseCode.Abnormal, "no token");
    }
    if (!this.wanted || this.sock || this.abort) return;
    this.later("connect", this.o.connectTimeoutMs ?? 15000, () => this.drop(CloseCode.Abnormal, "connect timeout"));
    if (this.transport === "sse") {
      this.abort = openSse(
        this.sseEndpoint()!,
        token,
        [...this.subs],
        this.lastEventId,
        this.o.fetch ?? fetch,
        (f, id) => {
          if (id) this.lastEventId = id;
          this.rx(f);
        },
        (code, reason) => this.down(code, reason),
      );
      return;
    }
    let s: Socket;
    try {
      s = this.sock = (this.o.socket ?? webSocket(this.o.WebSocket))(this.o.url);
    } catch (e) {
      // No WebSocket here at all (or a bad URL): SSE if it can, else try again later.
      clearTimeout(this.timers.connect);
      this.emit("error", new HeraldError(0, String(e)));
      if (this.sseEndpoint()) this.transport = "sse";
      return this.retry(CloseCode.Abnormal, String(e));
    }
    s.onopen = () => {
      this.since = -1;
      const auth: Frame = { type: "auth", token };
      const resume = this.resumable(token);
      if (resume.length) auth.resume = resume;
      if (this.o.device) auth.device = this.o.device;
      s.send(JSON.stringify(auth));
    };
    s.onmessage = (e) => this.rx(JSON.parse(String(e.data)));
    s.onclose = (e) => this.down(e.code, e.reason);
    s.onerror = () => this.down(CloseCode.Abnormal, "");
  }

  /** The `resume` entries of an `auth` frame: the user stream, the broadcasts, and the token's
   * own groups (others are resumed by `subscribe` with `since`). */
  private resumable(token: string): Frame[] {
    const groups = jwtClaims(token)?.groups ?? this.welcome?.groups ?? [];
    const out: Frame[] = [];
    for (const k in this.pos) {
      const g = k.slice(6);
      if (k === "user" || k === "broadcast") out.push({ [k]: true, ...this.pos[k] });
      else if (groups.includes(g)) out.push({ group: g, ...this.pos[k] });
    }
    return out;
  }

  private send(f: Frame): void {
    this.sock?.send(JSON.stringify(f));
  }

  private request(f: Frame): Promise<Frame | null> {
    return new Promise((res) => {
      const id = this.id++;
      this.waits.set(id, res);
      this.send({ ...f, id });
    });
  }

  private join(group: string): void {
    const since = this.pos["group:" + group];
    this.request(since ? { type: "subscribe", group, since } : { type: "subscribe", group }).then((f) => {
      if (f) this.settle(group, f.type === "error" ? new HeraldError(f.code, f.message) : undefined);
    });
  }

  private settle(group: string, err?: HeraldError): void {
    if (err) this.subs.delete(group);
    for (const [res, rej] of this.pending.get(group) ?? []) err ? rej(err) : res();
    this.pending.delete(group);
  }

  private rx(f: Frame): void {
    this.pingOut = false;
    const type = f.type;
    delete f.type;
    switch (type) {
      case "welcome": {
        clearTimeout(this.timers.connect);
        this.state = "open";
        this.welcome = f as Welcome;
        this.since = Date.now();
        this.wsFails = 0;
        this.emit("open", f);
        for (const g of this.subs) {
          if (f.groups.includes(g)) this.settle(g);
          else if (this.transport === "ws") this.join(g);
        }
        this.ticks(f);
        break;
      }
      case "msg": {
        const key = f.kind === "group" ? "group:" + f.group : f.kind;
        if (f.offset != null) {
          const p = this.pos[key];
          if (p && p.epoch === f.epoch && f.offset <= p.offset) return;
          this.pos[key] = { offset: f.offset, epoch: f.epoch };
        }
        this.emit("message", f);
        if (f.event) this.emit("#" + f.event, f);
        if (key === "user" && f.offset != null && this.o.device) this.ack({ offset: f.offset, epoch: f.epoch });
        break;
      }
      case "resumed": {
        const stream = f.group != null ? "group:" + f.group : f.user ? "user" : "broadcast";
        this.pos[stream] = { offset: f.offset, epoch: f.epoch };
        this.emit("resumed", { stream, epoch: f.epoch, offset: f.offset, recovered: f.recovered });
        break;
      }
      case "disconnect":
        this.hint = f.reconnect_after_ms;
        break;
      case "ack":
      case "pong":
      case "error": {
        const w = this.waits.get(f.id);
        this.waits.delete(f.id);
        f.type = type;
        if (type === "error") this.emit("error", new HeraldError(f.code, f.message));
        w?.(f);
      }
    }
  }

  /** Heartbeat and token refresh timers of a welcomed connection. */
  private ticks(w: Frame): void {
    if (this.o.heartbeat !== false) {
      // Over SSE the server's heartbeat comes every ping interval when nothing else does.
      const sse = this.transport === "sse";
      clearInterval(this.timers.ping);
      this.timers.ping = setInterval(
        () => {
          if (this.pingOut) return this.drop(CloseCode.PingTimeout, "no pong");
          this.pingOut = true;
          if (!sse) this.send({ type: "ping" });
        },
        Math.max(1, w.ping_interval) * (sse ? 2000 : 1000) + (sse ? 1000 : 0),
      );
    }
    if (typeof this.o.token === "function")
      this.later("refresh", Math.max(1000, w.expires * 1000 - Date.now() - this.refreshMs()), () =>
        this.refresh(),
      );
  }

  private async refresh(): Promise<void> {
    this.why = { reason: "refresh" };
    let token: string;
    try {
      token = await this.getToken();
    } catch (e) {
      return this.emit("error", new HeraldError(0, "token: " + e));
    }
    if (this.state !== "open") return;
    // Over SSE a token is presented only at connect: take the fresh one there.
    if (this.transport === "sse") return this.reopen();
    const f = await this.request({ type: "refresh", token });
    const exp = jwtClaims(token)?.exp;
    if (f?.type !== "ack") this.token = undefined;
    else if (exp && this.welcome) this.ticks({ ...this.welcome, expires: exp });
  }

  private ack(p: Position): void {
    this.unacked = p;
    if (this.timers.ack) return;
    this.timers.ack = setTimeout(async () => {
      this.timers.ack = undefined;
      const u = this.unacked;
      this.unacked = undefined;
      if (!u || this.state !== "open" || !this.sock) return;
      const f = await this.request({ type: "ack", stream: "user", ...u });
      if (f?.type === "ack") this.emit("acked", u);
      // Not kept (4503): acknowledge again, unless a later position is waiting already.
      else if (f && !this.unacked) this.ack(u);
    }, this.o.ackIntervalMs ?? 1000);
  }

  /** Closes the transport without reconnect logic of its own, then reconnects as after `code`. */
  private drop(code: number, reason: string): void {
    const s = this.sock;
    const a = this.abort;
    this.down(code, reason);
    try {
      s?.close();
      a?.();
    } catch {
      // Already closing.
    }
  }

  /** Reopens at once (SSE: a new set of groups or a fresh token). */
  private reopen(): void {
    this.stop();
    this.open();
  }

  /** Forgets the transport and every timer. */
  private stop(): void {
    const s = this.sock;
    if (s) s.onopen = s.onmessage = s.onclose = s.onerror = null;
    this.sock = undefined;
    this.abort?.();
    this.abort = undefined;
    try {
      s?.close(1000);
    } catch {
      // Not open yet.
    }
    clearInterval(this.timers.ping);
    for (const k in this.timers) clearTimeout(this.timers[k]);
    this.timers = {};
    this.unacked = undefined;
    this.pingOut = false;
    this.since = 0;
    for (const w of this.waits.values()) w(null);
    this.waits.clear();
    if (this.state === "open") this.state = "connecting";
  }

  /** The transport ended: decide whether, when and how to come back. */
  private down(code: number, reason: string): void {
    if (!this.sock && !this.abort) return;
    const opened = this.since;
    const was = this.transport;
    this.stop();
    if (!this.wanted) return;
    // A WebSocket that never opened (blocked upgrade, proxy): after a few, try SSE.
    if (was === "ws" && opened === 0 && ++this.wsFails >= (this.o.fallbackAfter ?? 2) && this.sseEndpoint())
      this.transport = "sse";
    if (opened > 0 && Date.now() - opened > 5000) this.attempts = 0;
    this.retry(code, reason);
  }

  private retry(code: number, reason: string): void {
    let ms: number | undefined;
    const renew = typeof this.o.token === "function";
    if (FINAL.includes(code) || (BAD_TOKEN.includes(code) && !renew)) ms = undefined;
    else {
      if (BAD_TOKEN.includes(code)) this.why = { reason: "rejected", code };
      const b = this.o.backoff ?? {};
      const d = Math.min(b.max ?? 30000, (b.min ?? 500) * 2 ** this.attempts++);
      ms = this.hint ?? d / 2 + (Math.random() * d) / 2;
    }
    this.hint = undefined;
    if (ms === undefined) {
      this.wanted = false;
      this.state = "closed";
    } else this.later("retry", ms, () => this.open());
    this.emit("close", { code, name: closeCodeName(code), reason, reconnectIn: ms });
  }

  private sseEndpoint(): string | undefined {
    const s = this.o.sse;
    if (s === false || !(this.o.fetch ?? globalThis.fetch)) return undefined;
    return s ?? sseUrl(this.o.url);
  }
}
